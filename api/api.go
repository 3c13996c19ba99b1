// Package api holds the reference of the cache-node's HTTP API:
// openapi.yaml, an OpenAPI 3.1 document. services/e2e/openapi_test.go checks
// a running node's requests and responses against it.
package api

import _ "embed"

//go:embed openapi.yaml
var openAPI string

// OpenAPI returns the OpenAPI 3.1 document of the cache-node's HTTP API, in YAML.
func OpenAPI() []byte { return []byte(openAPI) }
