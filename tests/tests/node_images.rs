//! The real node's images (docs/images.md) imported into a throwaway containerd of this test's
//! own (root, state and socket in a temporary directory; CRI off) and run with `ctr run`:
//! the elector's entrypoint runs as 65532 on an empty base, slapd and ldapsearch run from the
//! Debian rootfs, pause exits 0 on SIGTERM. Needs root, containerd, ctr and runc (Debian
//! packages, installed by `make test`); without them it fails. The first run builds everything (minutes).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ldap_elector_tests::node::images::{self, ctr, ImportTarget};

/// How long containerd may take to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a task may take to exit on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// containerd as a child of the test, removed with its directory on drop.
struct ScratchContainerd {
    dir: PathBuf,
    child: Child,
    target: ImportTarget,
}

impl ScratchContainerd {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("ldap-elector-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the containerd directory");
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            opt = dir.join("opt").display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).expect("write the containerd config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("create the containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let this = Self { dir, child, target: ImportTarget::k8s(&socket) };
        let started = Instant::now();
        while ctr::list(&this.target).is_err() {
            assert!(started.elapsed() < START_TIMEOUT, "containerd did not answer; see {}", this.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        this
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.target.containerd_socket).arg("--namespace").arg(&self.target.namespace);
        command
    }

    fn run(&self, image: &str, id: &str, args: &[&str]) -> Output {
        self.ctr().args(["run", "--rm", image, id]).args(args).output().expect("ctr run")
    }
}

impl Drop for ScratchContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unmounts whatever a crashed task left mounted below `dir` (deepest first).
fn unmount_below(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> =
        mounts.lines().filter_map(|l| l.split(' ').nth(1)).filter(|p| p.starts_with(&prefix)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(point).status();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn images_import_into_containerd_and_run() {
    let missing: Vec<&str> = ["containerd", "ctr", "runc"].into_iter().filter(|p| !on_path(p)).collect();
    // SAFETY: geteuid has no preconditions. containerd and mmdebstrap need root.
    let root = unsafe { libc::geteuid() } == 0;
    // Never a silent pass: the real node's tests need these as much as this one does.
    assert!(
        missing.is_empty() && root,
        "needs root and {missing:?}: run as root after hack/install-deps.sh (make test installs them)"
    );
    let started = Instant::now();
    let built = images::build().expect("build the images");
    eprintln!("images built in {:.1}s", started.elapsed().as_secs_f64());
    let again = images::build().expect("build the images again");
    assert_eq!(again.images, built.images, "a second build gives the same references");

    let containerd = ScratchContainerd::start();
    built.import(&containerd.target).expect("import");
    let listed = ctr::list(&containerd.target).expect("ctr images ls");
    for archive in &built.archives {
        assert!(listed.contains(&archive.reference), "{} not in {listed:?}", archive.reference);
    }
    built.import(&containerd.target).expect("a second import is a no-op");
    let images = &built.images;

    // The elector: entrypoint on an empty base, as 65532.
    let out = containerd.run(&images.elector, "elector-help", &["/ldap-elector", "--help"]);
    assert!(out.status.success(), "elector --help: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("Usage"), "{}", text(&out.stdout));
    let out = containerd.ctr().args(["containers", "create", &images.elector, "elector-spec"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = containerd.ctr().args(["containers", "info", "elector-spec"]).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("containers info JSON");
    let user = &info["Spec"]["process"]["user"];
    assert_eq!((user["uid"].as_u64(), user["gid"].as_u64()), (Some(65532), Some(65532)), "{user}");
    assert_eq!(info["Spec"]["process"]["args"][0], "/ldap-elector");
    let _ = containerd.ctr().args(["containers", "delete", "elector-spec"]).status();
    let out = containerd.run(&images.elector, "elector-shell", &["/bin/sh", "-c", "true"]);
    assert!(!out.status.success(), "the elector image must have no shell");

    let out = containerd.run(&images.webhook, "webhook-help", &["/ldap-elector-webhook", "--help"]);
    assert!(out.status.success(), "webhook --help: {}", text(&out.stderr));

    // OpenLDAP: slapd 2.5 and the client tools from Debian; the package's user.
    let out = containerd.run(&images.openldap, "slapd-version", &["/usr/sbin/slapd", "-VV"]);
    let both = text(&out.stdout) + &text(&out.stderr);
    assert!(both.contains("slapd 2.5"), "slapd -VV: {both}");
    let out = containerd.run(&images.openldap, "ldapsearch-version", &["ldapsearch", "-VV"]);
    let both = text(&out.stdout) + &text(&out.stderr);
    assert!(both.contains("ldapsearch"), "ldapsearch -VV: {both}");
    let out = containerd.run(&images.openldap, "openldap-id", &["id", "openldap"]);
    let expected = format!("uid={}(openldap) gid={}(openldap)", images.openldap_uid, images.openldap_gid);
    assert!(text(&out.stdout).starts_with(&expected), "{}", text(&out.stdout));

    // pause: exits 0 on SIGTERM.
    let mut pause = containerd.ctr().args(["run", "--rm", &images.pause, "pause"]).spawn().expect("ctr run pause");
    let started = Instant::now();
    loop {
        let tasks = containerd.ctr().args(["tasks", "ls"]).output().unwrap();
        if text(&tasks.stdout).lines().any(|l| l.starts_with("pause ") && l.contains("RUNNING")) {
            break;
        }
        assert!(started.elapsed() < START_TIMEOUT, "pause did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = containerd.ctr().args(["tasks", "kill", "--signal", "SIGTERM", "pause"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = pause.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < STOP_TIMEOUT, "pause ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "pause exited with {status}");
}
