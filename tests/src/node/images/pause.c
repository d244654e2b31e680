/* The sandbox ("pause") process of the real node's pods: PID 1 of every pod sandbox.
 * It holds the pod's namespaces, reaps orphaned children and exits 0 on SIGTERM or SIGINT,
 * like Kubernetes' own pause. Built static (musl-gcc -static -Os -s): deterministic, no libc
 * needed in the image. */
#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction down = {0};
    down.sa_handler = stop;
    sigaction(SIGINT, &down, NULL);
    sigaction(SIGTERM, &down, NULL);

    struct sigaction child = {0};
    child.sa_handler = reap;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &child, NULL);

    for (;;) {
        pause();
    }
}
