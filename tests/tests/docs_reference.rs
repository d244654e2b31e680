//! docs/reference.md must name every annotation and label of the contract and every flag
//! (with its environment variable) of both binaries: a name added to the code but not to
//! the docs fails here. Flags come from clap itself, names from the sources.

use clap::CommandFactory;

fn repo_file(rel: &str) -> String {
    let path = ldap_elector_tests::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(name, environment)` of every visible long flag of `cmd` and its visible subcommands,
/// with the subcommand path for the message.
fn flags(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, Option<String>)>) {
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if let Some(long) = arg.get_long().filter(|l| *l != "help" && *l != "version") {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            out.push((path.to_string(), format!("--{long}"), env));
        }
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        flags(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_flag_and_its_environment_variable_is_documented() {
    let doc = repo_file("docs/reference.md");
    let mut all = Vec::new();
    flags(&ldap_elector::cli::args::Cli::command(), "ldap-elector", &mut all);
    flags(&ldap_elector_webhook::args::Args::command(), "ldap-elector-webhook", &mut all);
    assert!(all.len() > 30, "clap reported only {} flags: the walk is broken", all.len());
    let missing: Vec<String> = all
        .iter()
        .flat_map(|(cmd, flag, env)| {
            let flag_missing = (!doc.contains(&format!("`{flag}`"))).then(|| format!("{cmd} {flag}"));
            let env_missing =
                env.as_ref().filter(|e| !doc.contains(&format!("`{e}`"))).map(|e| format!("{cmd} {flag}: env {e}"));
            flag_missing.into_iter().chain(env_missing)
        })
        .collect();
    assert!(missing.is_empty(), "not in docs/reference.md: {missing:#?}");
}

#[test]
fn every_annotation_and_label_of_the_contract_is_documented() {
    let doc = repo_file("docs/reference.md");
    let contract = repo_file("contract/src/names.rs");
    let prefix = format!("\"{}/", ldap_elector_contract::DOMAIN);
    let names: Vec<&str> =
        contract.match_indices(&prefix).filter_map(|(at, _)| contract[at + 1..].split('"').next()).collect();
    assert!(names.contains(&ldap_elector_contract::ANNOTATION_INJECT), "the scan found {names:?}");
    let missing: Vec<&&str> = names.iter().filter(|n| !doc.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "not in docs/reference.md: {missing:?}");
}
