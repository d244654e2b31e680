// Command client-go-elector is the baseline ldap-elector is measured against: textbook
// client-go leader election (LeaseLock, ReleaseOnCancel) that labels its own pod from the
// callbacks, the way client-go users usually do it: no fencing, no demote-before-release.
//
// Identity is POD_NAME, the Lease is ELECTOR_LEASE_NAME (default <statefulset>-leader) in
// POD_NAMESPACE, credentials come from KUBECONFIG. SIGTERM releases the Lease and exits.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

const roleLabel = "ldap-elector.dev/role"

func main() {
	leaseDuration := flag.Duration("lease-duration", envDuration("ELECTOR_LEASE_DURATION", 15*time.Second),
		"how long followers wait after the last observed renew ($ELECTOR_LEASE_DURATION)")
	renewDeadline := flag.Duration("renew-deadline", envDuration("ELECTOR_RENEW_DEADLINE", 10*time.Second),
		"how long the leader retries renewing before it gives up ($ELECTOR_RENEW_DEADLINE)")
	retryPeriod := flag.Duration("retry-period", envDuration("ELECTOR_RETRY_PERIOD", 2*time.Second),
		"interval between attempts to acquire or renew ($ELECTOR_RETRY_PERIOD)")
	flag.Parse()

	pod, namespace := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if pod == "" || namespace == "" {
		fatal("POD_NAME and POD_NAMESPACE must be set")
	}
	leaseName := os.Getenv("ELECTOR_LEASE_NAME")
	if leaseName == "" {
		leaseName = regexp.MustCompile(`-[0-9]+$`).ReplaceAllString(pod, "") + "-leader"
	}
	config, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		fatal("loading KUBECONFIG", "err", err)
	}
	client := kubernetes.NewForConfigOrDie(config)

	setRole := func(role string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, roleLabel, role)
		_, err := client.CoreV1().Pods(namespace).Patch(ctx, pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil {
			slog.Error("labelling pod", "role", role, "err", err)
			return
		}
		slog.Info("role", "pod", pod, "role", role)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// A restarted ex-leader must not keep the leader label it had when it died.
	setRole("standby")
	slog.Info("elector started", "pod", pod, "lease", namespace+"/"+leaseName,
		"leaseDuration", *leaseDuration, "renewDeadline", *renewDeadline, "retryPeriod", *retryPeriod)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: leaseName, Namespace: namespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: pod},
	}
	// Run returns when the lease is lost or ctx ends; campaign again until SIGTERM.
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			ReleaseOnCancel: true,
			LeaseDuration:   *leaseDuration,
			RenewDeadline:   *renewDeadline,
			RetryPeriod:     *retryPeriod,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { setRole("leader") },
				OnStoppedLeading: func() { setRole("standby") },
			},
		})
	}
	slog.Info("elector stopped", "pod", pod)
}

// envDuration reads a duration such as "8s" or "500ms" (a bare number means seconds).
func envDuration(name string, fallback time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return fallback
	}
	if d, err := time.ParseDuration(v); err == nil {
		return d
	}
	if d, err := time.ParseDuration(v + "s"); err == nil {
		return d
	}
	fatal("not a duration", "env", name, "value", v)
	return 0
}

func fatal(msg string, args ...any) {
	slog.Error(msg, args...)
	os.Exit(1)
}
