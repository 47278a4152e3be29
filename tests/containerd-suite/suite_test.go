// Package suite runs containerd's snapshotter conformance suite
// (snapshots/testsuite) against an external proxy snapshotter process.
//
// Environment:
//
//	SNAPSHOTTER_CMD            required; run as `/bin/sh -c "exec $SNAPSHOTTER_CMD"` after
//	                           replacing {root} and {socket} (so one command; `env K=V prog` for vars), e.g.
//	                           'thinlayer --root {root}/state --driver overlay snapshotter serve --address {socket}'
//	SNAPSHOTTER_NAME           name passed to the suite/proxy (default "thinlayer")
//	SNAPSHOTTER_START_TIMEOUT  how long to wait for the socket (default 10s)
//	SNAPSHOTTER_STOP_TIMEOUT   how long to wait after SIGTERM before SIGKILL (default 10s)
//	SNAPSHOTTER_LOG_DIR        if set, each process's stdout+stderr is kept there
//
// Must run as root (the suite mounts what the snapshotter returns).
package suite

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func TestSnapshotterSuite(t *testing.T) {
	tmpl := os.Getenv("SNAPSHOTTER_CMD")
	if tmpl == "" {
		t.Fatal("SNAPSHOTTER_CMD is not set (e.g. 'thinlayer --root {root}/state snapshotter serve --address {socket}')")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the snapshotter suite mounts filesystems: run it as root")
	}
	name := envOr("SNAPSHOTTER_NAME", "thinlayer")
	testsuite.SnapshotterSuite(t, name, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return startExternal(ctx, tmpl, name, root)
	})
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envDuration(k string, def time.Duration) time.Duration {
	if v := os.Getenv(k); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// proc is one running snapshotter process.
type proc struct {
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error
	logPath string
	keepLog bool
	sockDir string
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail returns the last lines of the process's stdout+stderr.
func (p *proc) logTail() string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 40 {
			lines = lines[1:]
		}
	}
	if len(lines) == 0 {
		return "(empty)"
	}
	return strings.Join(lines, "\n")
}

// signal sends sig to the snapshotter process itself.
func (p *proc) signal(sig syscall.Signal) {
	_ = syscall.Kill(p.cmd.Process.Pid, sig)
}

// killGroup SIGKILLs whatever is left in the snapshotter's process group and
// reports whether anything was.
func (p *proc) killGroup() bool {
	if syscall.Kill(-p.cmd.Process.Pid, 0) != nil {
		return false
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	return true
}

// stop sends SIGTERM, waits up to timeout, SIGKILLs if needed.
func (p *proc) stop(timeout time.Duration) error {
	if p.exited() {
		p.killGroup()
		return fmt.Errorf("snapshotter exited before cleanup (%v); output:\n%s", p.waitErr, p.logTail())
	}
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.waitErr != nil {
			p.killGroup()
			return fmt.Errorf("snapshotter did not exit cleanly on SIGTERM: %v; output:\n%s", p.waitErr, p.logTail())
		}
		if p.killGroup() {
			return fmt.Errorf("snapshotter exited but left processes in its process group (SIGKILLed them); output:\n%s", p.logTail())
		}
		return nil
	case <-time.After(timeout):
		p.killGroup()
		<-p.done
		return fmt.Errorf("snapshotter did not exit within %v of SIGTERM; had to SIGKILL; output:\n%s", timeout, p.logTail())
	}
}

func (p *proc) removeTemp() {
	if !p.keepLog {
		os.RemoveAll(p.sockDir)
	} else {
		os.Remove(filepath.Join(p.sockDir, "s.sock"))
		os.Remove(p.sockDir)
	}
}

func startExternal(ctx context.Context, tmpl, name, root string) (snapshots.Snapshotter, func() error, error) {
	// Short dir for the socket: sun_path is limited to 108 bytes and the
	// suite's root is already long-ish.
	sockDir, err := os.MkdirTemp("", "snapsock-")
	if err != nil {
		return nil, nil, err
	}
	socket := filepath.Join(sockDir, "s.sock")
	p := &proc{done: make(chan struct{}), sockDir: sockDir, logPath: filepath.Join(sockDir, "snapshotter.log")}
	if dir := os.Getenv("SNAPSHOTTER_LOG_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, nil, err
		}
		p.logPath = filepath.Join(dir, filepath.Base(filepath.Dir(root))+".log")
		p.keepLog = true
	}
	logf, err := os.Create(p.logPath)
	if err != nil {
		os.RemoveAll(sockDir)
		return nil, nil, err
	}
	defer logf.Close() // the child keeps its own descriptor

	cmdline := strings.NewReplacer("{root}", root, "{socket}", socket).Replace(tmpl)
	// "exec" so the snapshotter itself is our child: SIGTERM reaches it and its
	// exit status is what we judge. Use `env VAR=x prog ...` for variables.
	p.cmd = exec.Command("/bin/sh", "-c", "exec "+cmdline)
	// An *os.File (not a Go writer) so Wait never blocks on a copy goroutine.
	p.cmd.Stdout = logf
	p.cmd.Stderr = logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		p.removeTemp()
		return nil, nil, fmt.Errorf("start %q: %w", cmdline, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()

	fail := func(err error) (snapshots.Snapshotter, func() error, error) {
		p.killGroup()
		<-p.done
		p.removeTemp()
		return nil, nil, err
	}

	// Wait for the socket to accept connections.
	startTimeout := envDuration("SNAPSHOTTER_START_TIMEOUT", 10*time.Second)
	deadline := time.Now().Add(startTimeout)
	for {
		if p.exited() {
			return fail(fmt.Errorf("snapshotter %q exited before serving (%v); output:\n%s", cmdline, p.waitErr, p.logTail()))
		}
		c, err := net.DialTimeout("unix", socket, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("snapshotter %q: socket %s not accepting after %v (last error: %v); output:\n%s",
				cmdline, socket, startTimeout, err, p.logTail()))
		}
		time.Sleep(20 * time.Millisecond)
	}

	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Dial exactly like containerd 1.6's proxy_plugins client: target
	// "unix://<path>" (=> :authority "localhost"; a bare path becomes the
	// authority and hyper/tonic rejects it with RST_STREAM PROTOCOL_ERROR).
	conn, err := grpc.DialContext(dctx, dialer.DialAddress(socket),
		grpc.WithInsecure(), // Debian's grpc-go 1.33 predates credentials/insecure
		grpc.WithBlock(),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)))
	if err != nil {
		return fail(fmt.Errorf("grpc dial %s: %w; output:\n%s", socket, err, p.logTail()))
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), name)

	cleanup := func() error {
		var errs []string
		if err := sn.Close(); err != nil {
			errs = append(errs, fmt.Sprintf("close snapshotter: %v", err))
		}
		if err := conn.Close(); err != nil {
			errs = append(errs, fmt.Sprintf("close grpc conn: %v", err))
		}
		if err := p.stop(envDuration("SNAPSHOTTER_STOP_TIMEOUT", 10*time.Second)); err != nil {
			errs = append(errs, err.Error())
		}
		// Anything still mounted under the suite's temp dir was left behind by
		// the snapshotter: report it and detach it so RemoveAll can't walk into it.
		if left := mountsUnder(filepath.Dir(root)); len(left) > 0 {
			for i := len(left) - 1; i >= 0; i-- {
				_ = syscall.Unmount(left[i], syscall.MNT_DETACH)
			}
			errs = append(errs, fmt.Sprintf("mounts left behind after the snapshotter stopped: %v", left))
		}
		p.removeTemp()
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "\n"))
		}
		return nil
	}
	return sn, cleanup, nil
}

// mountsUnder lists mount points at or below dir, in mountinfo order.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeOctal(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

// unescapeOctal undoes mountinfo's \040-style escaping.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for j := 1; j <= 3; j++ {
				c := s[i+j]
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + (c - '0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
