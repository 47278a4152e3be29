//go:build linux
// +build linux

// BenchmarkProxy runs containerd's snapshotter benchmark (benchmarkSnapshotter
// in snapshots/benchsuite/benchmark_test.go, which
// tools/build-containerd-bench.sh copies unchanged from Debian's containerd
// 1.6 source into this package) against a snapshotter reached over its gRPC
// socket through containerd's snapshots/proxy client, as containerd reaches a
// proxy plugin. BenchmarkOverlay and BenchmarkDeviceMapper, containerd's own,
// run its in-process snapshotters with the same code.
//
//	containerd-bench.test -test.run '^$' -test.benchtime 1x \
//	    -test.bench '^BenchmarkProxy$' -proxy.address /run/thinlayer/snapshotter.sock
package benchsuite

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"google.golang.org/grpc"
	"gotest.tools/v3/assert"
)

var (
	proxyAddress string
	proxyName    string
)

func init() {
	flag.StringVar(&proxyAddress, "proxy.address", "", "Unix socket of a proxy snapshotter to run the benchmark on")
	flag.StringVar(&proxyName, "proxy.name", "thinlayer", "Name of the proxy snapshotter")
}

func BenchmarkProxy(b *testing.B) {
	if proxyAddress == "" {
		b.Skip("proxy benchmark requires -proxy.address")
	}
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// Dialled as containerd 1.6 dials a proxy plugin ("unix://<path>").
	conn, err := grpc.DialContext(dctx, dialer.DialAddress(proxyAddress),
		grpc.WithInsecure(), // Debian's grpc-go predates credentials/insecure
		grpc.WithBlock(),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)))
	assert.NilError(b, err, "dialling %s", proxyAddress)
	snapshotter := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), proxyName)

	defer func() {
		// What BenchmarkOverlay's RemoveAll and BenchmarkDeviceMapper's
		// ResetPool do for theirs: leave the daemon's store as it was found,
		// so the next run's keys (prepare-layer-1, ...) are free again.
		assert.NilError(b, removeAll(ctx, snapshotter))
		assert.NilError(b, snapshotter.Close())
		assert.NilError(b, conn.Close())
	}()

	benchmarkSnapshotter(b, snapshotter)
}

// removeAll removes every snapshot, children before their parents.
func removeAll(ctx context.Context, sn snapshots.Snapshotter) error {
	for {
		var infos []snapshots.Info
		if err := sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error {
			infos = append(infos, i)
			return nil
		}); err != nil {
			return fmt.Errorf("listing snapshots: %w", err)
		}
		if len(infos) == 0 {
			return nil
		}
		parents := map[string]bool{}
		for _, i := range infos {
			parents[i.Parent] = true
		}
		removed := 0
		for _, i := range infos {
			if parents[i.Name] {
				continue
			}
			if err := sn.Remove(ctx, i.Name); err != nil {
				return fmt.Errorf("removing snapshot %s: %w", i.Name, err)
			}
			removed++
		}
		if removed == 0 {
			return fmt.Errorf("%d snapshots left, none of them a leaf", len(infos))
		}
	}
}
