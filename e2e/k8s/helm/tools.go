//go:build tools

// Records helm's main package as a dependency so `go mod tidy` keeps go.sum
// complete; never compiled.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
