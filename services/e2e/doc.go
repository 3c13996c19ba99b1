// Package e2e holds the end-to-end tests: the three services built and run as
// separate OS processes against a real NATS server with JetStream (in process)
// and a real PostgreSQL (a private instance when the test stops or kills it).
package e2e
