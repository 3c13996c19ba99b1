// Package deployments holds AniVault's deployment files: the container image
// (docker/), a docker compose stack (compose/), Kubernetes manifests (k8s/)
// and the NATS cluster configuration with users and subject permissions by
// role (nats/). It has no code of its own; its tests check that the files
// parse, that they only set environment variables the services read, and
// that the NATS permissions let each role do its job and nothing more.
package deployments
