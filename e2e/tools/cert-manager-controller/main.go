// Command cert-manager-controller runs cert-manager's own controllers (the
// module github.com/cert-manager/cert-manager, version pinned by go.mod)
// outside the cluster, for berth's end-to-end tests.
//
// Why not upstream's binary: its main package lives in the nested module
// github.com/cert-manager/cert-manager/cmd/controller, which the Go proxy here
// does not serve (nor cmctl). The controllers themselves are in the root
// module's pkg/ tree and register themselves on import, so this file is only
// the wiring upstream's cmd/controller/app does: build the shared context,
// construct the controllers, start the informers, run.
//
// Only what a CA or self-signed Issuer needs is linked in: the issuers and
// clusterissuers controllers, the Certificate controllers (trigger, key
// manager, request manager, issuing, readiness, revision manager), the
// CertificateRequest approver and the CA/self-signed signers. No ACME, no
// Vault/Venafi, no ingress or Gateway shims, no webhook, no leader election
// (run one copy).
//
// Usage:
//
//	cert-manager-controller run --kubeconfig FILE [--cluster-resource-namespace NS] [-v N]
//	cert-manager-controller renew --kubeconfig FILE -n NAMESPACE NAME
//
// `renew` does what `cmctl renew` does: it adds the Issuing=True condition
// (reason ManuallyTriggered) to the Certificate's status, and cert-manager
// re-issues.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	apiutil "github.com/cert-manager/cert-manager/pkg/api/util"
	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	"github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"

	// Controllers register themselves with controller.Register on import.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// Issuer implementations the issuers controllers set up (Ready condition).
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cert-manager-controller run|renew [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = run(os.Args[2:])
	case "renew":
		err = renew(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: use run or renew", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	clusterNS := fs.String("cluster-resource-namespace", "cert-manager", "namespace of ClusterIssuer secrets")
	workers := fs.Int("workers", 2, "workers per controller")
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kubeconfig == "" {
		return fmt.Errorf("no kubeconfig: pass --kubeconfig or set KUBECONFIG")
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, klog.Background(), "cert-manager")

	factory, err := controller.NewContextFactory(ctx, controller.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   20,
		KubernetesAPIBurst: 50,
		IssuerOptions:      controller.IssuerOptions{ClusterResourceNamespace: *clusterNS},
		CertificateOptions: controller.CertificateOptions{
			// upstream's defaults
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return fmt.Errorf("building the controller context: %w", err)
	}

	names := make([]string, 0, len(controller.Known()))
	for name := range controller.Known() {
		names = append(names, name)
	}
	sort.Strings(names)
	done := make(chan error, len(names))
	for _, name := range names {
		iface, err := controller.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("constructing controller %s: %w", name, err)
		}
		klog.InfoS("starting controller", "controller", name)
		go func(name string, iface controller.Interface) {
			err := iface.Run(*workers, ctx)
			if err != nil {
				err = fmt.Errorf("controller %s: %w", name, err)
			}
			done <- err
		}(name, iface)
	}

	// Informers are shared through the context; start them once every
	// controller has registered the ones it needs.
	shared, err := factory.Build()
	if err != nil {
		return err
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())
	klog.InfoS("cert-manager controllers running", "count", len(names))

	for range names {
		if err := <-done; err != nil && ctx.Err() == nil {
			return err
		}
	}
	return nil
}

func renew(args []string) error {
	fs := flag.NewFlagSet("renew", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	ns := fs.String("n", "default", "namespace of the Certificate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: renew [--kubeconfig FILE] [-n NAMESPACE] CERTIFICATE")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	client, err := versioned.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	crt, err := client.CertmanagerV1().Certificates(*ns).Get(ctx, fs.Arg(0), metav1.GetOptions{})
	if err != nil {
		return err
	}
	if apiutil.CertificateHasCondition(crt, cmapi.CertificateCondition{Type: cmapi.CertificateConditionIssuing, Status: cmmeta.ConditionTrue}) {
		fmt.Printf("Certificate %s/%s is already being issued\n", *ns, crt.Name)
		return nil
	}
	apiutil.SetCertificateCondition(crt, crt.Generation, cmapi.CertificateConditionIssuing, cmmeta.ConditionTrue,
		"ManuallyTriggered", "Certificate re-issuance manually triggered")
	if _, err := client.CertmanagerV1().Certificates(*ns).UpdateStatus(ctx, crt, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("marking %s/%s for renewal: %w", *ns, crt.Name, err)
	}
	fmt.Printf("Manually triggered issuance of Certificate %s/%s\n", *ns, crt.Name)
	return nil
}
