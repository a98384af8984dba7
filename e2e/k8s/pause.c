/*
 * The sandbox ("pause") container of e2e/cluster: nothing can be pulled on
 * the machines berth is tested on, so the image containerd names in
 * sandbox_image is built from this file with `gcc -static`.
 *
 * It holds the pod's namespaces open, reaps children re-parented to it when
 * it is PID 1 of a shared PID namespace, and exits on SIGTERM or SIGINT.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(void) {
	struct sigaction stop = {.sa_handler = on_stop};
	struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
	if (sigaction(SIGTERM, &stop, NULL) < 0 || sigaction(SIGINT, &stop, NULL) < 0 ||
	    sigaction(SIGCHLD, &child, NULL) < 0)
		return 1;
	for (;;)
		pause();
}
