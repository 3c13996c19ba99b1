// Command local runs AniVault on one machine.
//
//	go run ./deployments/local demo [flags]   the demo: load, a real PostgreSQL outage, recovery, a tally
//	go run ./deployments/local up [flags]     the three services against NATS_URL and DATABASE_URL
//
// `go tool task demo` and `go tool task up` call it.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: local demo|up [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "demo":
		err = runDemo(ctx, os.Args[2:], os.Stdout)
	case "up":
		err = runUp(ctx, os.Args[2:], os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q: use demo or up", os.Args[1])
	}
	if err != nil {
		var lost *lostError
		if errors.As(err, &lost) {
			fmt.Fprintln(os.Stderr, "FAILED:", err)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
