package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Reliability: what happens when processes die mid-write, when many of them
// write at once, and when clients misbehave on the network.

// TestReliabilityCLIKilledWhileSaving SIGKILLs `helyos context set` at
// random points of its run. Afterwards the file always parses, is 0600,
// and holds every change whose command had exited 0; the change in flight
// is either fully there or not at all.
//
// The kill points are calibrated on the machine at hand: unkilled runs
// measure how long a run takes here, the delays are drawn from around that
// span, and the span widens while one outcome repeats, until kills have
// landed both before the run finished and after it.
func TestReliabilityCLIKilledWhileSaving(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	path := cliConfigPath(home)
	// possible[c] holds the projects context c may show: the last one a run
	// confirmed, and those of later runs that were killed (a kill can land
	// after the rename).
	possible := map[string]map[string]bool{}
	const calibration, rounds, maxRounds = 5, 150, 600
	var unkilled []time.Duration
	var lo, hi time.Duration // kill delays are drawn from [lo, hi]
	kills, finished, streak, lastKilled := 0, 0, 0, false
	i := 0
	for ; i < maxRounds && (i < rounds || kills == 0 || finished == 0); i++ {
		name := fmt.Sprintf("c%d", i%5)
		project := fmt.Sprintf("p%d", i)
		cmd := exec.Command(helyosBin, "--server", "https://127.0.0.1:1", "context", "set", name, "--project", project)
		cmd.Env = testEnv(home)
		delay := time.Duration(-1) // calibration: not killed
		if i >= calibration {
			delay = lo + rand.N(hi-lo+1)
		}
		took, killed := runKilledAfter(t, cmd, delay)
		switch {
		case i < calibration:
			unkilled = append(unkilled, took)
			slices.Sort(unkilled)
			median := unkilled[len(unkilled)/2]
			lo, hi = median/2, median*3/2
		case killed:
			kills++
		default:
			finished++
		}
		if killed {
			if possible[name] == nil {
				possible[name] = map[string]bool{"": true} // may not exist yet
			}
			possible[name][project] = true
		} else {
			possible[name] = map[string]bool{project: true}
		}
		if streak++; killed != lastKilled {
			streak, lastKilled = 1, killed
		}
		if i >= calibration && streak >= 20 { // widen towards the missing outcome
			if killed {
				hi *= 2
			} else {
				lo /= 2
			}
			streak = 0
		}
		checkConfigAfterKill(t, fmt.Sprintf("round %d", i), path, possible)
	}
	if kills == 0 || finished == 0 {
		t.Fatalf("could not race kills against the save: in %d rounds with kill delays widened to %v–%v (unkilled runs took %v here), %d runs were killed and %d finished first; both are needed",
			i, lo, hi, unkilled, kills, finished)
	}
	// A kill between creating the temporary file and renaming it leaves the
	// temporary behind (0600 from creation); the next save removes it.
	leftovers, _ := filepath.Glob(filepath.Join(home, ".helyos", ".config.toml*.tmp-*"))
	planted := filepath.Join(home, ".helyos", ".config.toml.tmp-planted")
	if err := os.WriteFile(planted, []byte("half a save"), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(home, ".helyos", ".other.tmp-1") // not ours: kept
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, home, nil, "context", "use", "c0")
	if left, _ := filepath.Glob(filepath.Join(home, ".helyos", ".config.toml*.tmp-*")); len(left) != 0 {
		t.Errorf("the next save left %d temporary files behind: %v", len(left), left)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("the save removed a temporary file that is not its own: %v", err)
	}
	t.Logf("%d rounds (unkilled runs took %v; kill delays %v–%v): %d killed before they finished, %d finished first, %d temporary files left by kills, removed by the next save",
		i, unkilled, lo, hi, kills, finished, len(leftovers))
}

// runKilledAfter runs cmd and SIGKILLs it after delay unless it has exited
// by then (a negative delay: never). It returns how long the run took and
// whether the kill ended it; a run that fails on its own fails the test.
func runKilledAfter(t *testing.T, cmd *exec.Cmd, delay time.Duration) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var timer <-chan time.Time
	if delay >= 0 {
		timer = time.After(delay)
	}
	var err error
	select {
	case err = <-done:
	case <-timer:
		cmd.Process.Kill()
		err = <-done
	}
	took := time.Since(start)
	if err == nil {
		return took, false
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("%v failed on its own: %v", cmd.Args[1:], err)
	}
	return took, true
}

// checkConfigAfterKill: the config parses, every context shows one of the
// projects possible for it, and the file is 0600.
func checkConfigAfterKill(t *testing.T, round, path string, possible map[string]map[string]bool) {
	t.Helper()
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatalf("%s: after a kill the config does not parse: %v", round, err)
	}
	for n, ok := range possible {
		got := ""
		if c := cfg.Context(n); c != nil {
			got = c.Project
		}
		if !ok[got] {
			t.Fatalf("%s: context %s shows project %q, want one of %v", round, n, got, ok)
		}
	}
	if _, err := os.Stat(path); err == nil && permOf(t, path) != 0o600 {
		t.Fatalf("%s: config mode %04o", round, permOf(t, path))
	}
}

// TestReliabilityDaemonKilledWhileWriting SIGKILLs the daemon while a client
// creates and revokes tokens. After each restart every acknowledged create
// still verifies, every acknowledged revoke still refuses, and the store is
// intact and 0600.
//
// The kill is timed by the work done, not by the clock: it comes once the
// client has a random number of answers, after a random part of the time
// one answer took so far, so it lands inside a create or a revoke however
// fast the machine is.
func TestReliabilityDaemonKilledWhileWriting(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, nil)
	admin := d.token
	created := map[string]string{} // name → secret, acknowledged
	revoked := map[string]bool{}   // acknowledged revokes
	revoking := map[string]bool{}  // revokes sent: the kill may land after the save, before the answer
	var mu sync.Mutex              // guards the maps and n
	n := 0
	const rounds = 4
	for round := range rounds {
		var acked atomic.Int64
		var killed atomic.Bool
		failed := make(chan error, 1)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			c := &http.Client{Timeout: 2 * time.Minute}
			op := func(name string, revoke bool) error {
				if revoke {
					mu.Lock()
					revoking[name] = true
					mu.Unlock()
					return revokeOverHTTP(c, d.url, admin, name)
				}
				secret, err := createOverHTTP(c, d.url, admin, name, 0)
				if err == nil {
					mu.Lock()
					created[name] = secret
					mu.Unlock()
				}
				return err
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				name := fmt.Sprintf("t%d", n)
				even := n%2 == 0
				n++
				mu.Unlock()
				for _, revoke := range []bool{false, true} {
					if revoke && !even {
						break
					}
					if err := op(name, revoke); err != nil {
						if !killed.Load() {
							failed <- err
						}
						return
					}
					if revoke {
						mu.Lock()
						revoked[name] = true
						mu.Unlock()
					}
					acked.Add(1)
				}
			}
		})
		target := int64(1 + rand.IntN(4))
		start := time.Now()
		for deadline := start.Add(2 * time.Minute); acked.Load() < target; time.Sleep(time.Millisecond) {
			select {
			case err := <-failed:
				t.Fatalf("round %d: a request failed before the kill: %v", round, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: only %d of %d creates and revokes were answered within 2 minutes", round, acked.Load(), target)
			}
		}
		perAnswer := time.Since(start) / time.Duration(acked.Load())
		time.Sleep(rand.N(perAnswer + 1))
		killed.Store(true)
		d.cmd.Process.Kill()
		<-d.exited
		close(stop)
		wg.Wait()
		select {
		case err := <-failed:
			t.Fatalf("round %d: a request failed before the kill: %v", round, err)
		default:
		}
		d = restartAfterKill(t, round, d)
		for name, secret := range created {
			code, _, _ := d.do(t, "GET", "/api/v1/whoami", secret, "")
			want := http.StatusOK
			if revoked[name] {
				want = http.StatusUnauthorized
			} else if revoking[name] && code == http.StatusUnauthorized {
				continue // revoked and saved, killed before it answered
			}
			if code != want {
				t.Fatalf("round %d: token %s (revoked=%v) answers %d after restart, want %d", round, name, revoked[name], code, want)
			}
		}
	}
	t.Logf("%d kills; %d creates and %d revokes acknowledged, all intact after restart", rounds, len(created), len(revoked))
}

// restartAfterKill checks the killed daemon's token store parses and is
// 0600, plants temporary files (ours must go at start, another program's
// must stay), and starts the daemon again.
func restartAfterKill(t *testing.T, round int, d *testDaemon) *testDaemon {
	t.Helper()
	store := filepath.Join(d.dataDir, tokenStoreFile)
	if _, err := readTokenFile(store); err != nil {
		t.Fatalf("round %d: the token store does not parse after SIGKILL: %v", round, err)
	}
	if m := permOf(t, store); m != 0o600 {
		t.Fatalf("round %d: token store mode %04o", round, m)
	}
	foreign := filepath.Join(d.dataDir, ".notes.txt.tmp-1")
	for _, p := range []string{filepath.Join(d.dataDir, ".tokens.json.tmp-planted"), foreign} {
		if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d = startDaemon(t, d.home, nil)
	if left, _ := filepath.Glob(filepath.Join(d.dataDir, ".*.tmp-*")); len(left) != 1 || left[0] != foreign {
		t.Errorf("round %d: after restart the temporary files are %v, want only %s", round, left, foreign)
	}
	os.Remove(foreign)
	return d
}

func revokeOverHTTP(c *http.Client, base, admin, name string) error {
	req, _ := http.NewRequest("DELETE", base+"/api/v1/tokens/"+name, nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("revoke %s: %d", name, resp.StatusCode)
	}
	return nil
}

// TestReliabilityRaceRevokedNeverAccepted: goroutines create, verify and
// revoke (or rotate without grace) tokens on one store at once. Once revoke
// or rotate has returned, no verify that starts afterwards accepts the old
// secret. Run with -race in .ci/run.
func TestReliabilityRaceRevokedNeverAccepted(t *testing.T) {
	t.Parallel()
	s, _ := newTestStore(t)
	ctx := context.Background()
	s.create(ctx, "keeper", "", 0, noAudit) // so that no worker's token is the last admin
	const workers, perWorker = 4, 2
	var wg sync.WaitGroup
	var accepted, refused atomic.Int64
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				name := fmt.Sprintf("w%d-%d", w, i)
				secret, _, err := s.create(ctx, name, "", 0, noAudit)
				if err != nil {
					t.Errorf("create %s: %v", name, err)
					return
				}
				// Three verifiers hammer the token; it is revoked once they
				// have all been accepted, and they go on 100 more times each.
				var revoked atomic.Bool
				var ok atomic.Int64
				var vg sync.WaitGroup
				for range 3 {
					vg.Go(func() {
						for after := 0; after < 100; {
							wasRevoked := revoked.Load()
							_, err := s.verify(ctx, secret, "")
							switch {
							case err == nil && wasRevoked:
								t.Errorf("token %s accepted after its revoke returned", name)
								return
							case err == nil:
								accepted.Add(1)
								ok.Add(1)
							case err == errTokenRevoked:
								refused.Add(1)
							default:
								t.Errorf("verify %s: %v", name, err)
								return
							}
							if wasRevoked {
								after++
							}
						}
					})
				}
				for deadline := time.Now().Add(5 * time.Minute); ok.Load() < 30; {
					if time.Now().After(deadline) {
						t.Errorf("token %s: verifiers not accepted within 5 minutes (%d)", name, ok.Load())
						revoked.Store(true) // let them finish
						break
					}
					time.Sleep(time.Millisecond)
				}
				if i == 0 {
					err = s.revoke(name, noAudit)
				} else {
					_, _, err = s.rotate(ctx, name, 0, noAudit)
				}
				if err != nil {
					t.Errorf("revoke or rotate %s: %v", name, err)
				}
				revoked.Store(true)
				vg.Wait()
				if _, err := s.verify(ctx, secret, ""); err != errTokenRevoked {
					t.Errorf("verify %s after revoke: %v, want %v", name, err, errTokenRevoked)
				}
				_ = s.list()
			}
		}()
	}
	wg.Wait()
	recs, err := readTokenFile(s.path)
	if want := workers*perWorker + 1 + workers; err != nil || len(recs) != want { // one rotation per worker
		t.Errorf("store holds %d records (%v), want %d", len(recs), err, want)
	}
	t.Logf("%d verifications accepted before revoke, %d refused", accepted.Load(), refused.Load())
}

// TestReliabilityIdleConnections: hundreds of idle connections, raw and
// TLS-handshaken, do not keep a valid client out (200: under the default
// --max-conns-per-ip; TestConnectionFlood goes past it).
func TestReliabilityIdleConnections(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	addr := strings.TrimPrefix(d.url, "https://")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	const idle = 200
	for i := range idle {
		c, err := net.DialTimeout("tcp", addr, time.Minute)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		if i%2 == 0 {
			tc := tls.Client(c, &tls.Config{RootCAs: d.caPool(t), ServerName: "localhost"})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("idle TLS connection %d: %v", i, err)
			}
			c = tc
		}
		conns = append(conns, c)
	}
	for i := range 20 {
		if code, _, body := d.do(t, "GET", "/api/v1/whoami", d.token, ""); code != http.StatusOK {
			t.Fatalf("whoami %d with %d idle connections open: %d %s", i, idle, code, body)
		}
	}
	t.Logf("%d idle connections (half TLS), 20 whoami requests answered", idle)
}

// TestReliabilityNonReadingClient: a client that pipelines requests and never
// reads the answers is cut off by the write limit instead of holding a
// connection and its goroutine forever (the limit shortened in process; the
// daemon's own is TestServerTimeoutsAsDocumented's).
func TestReliabilityNonReadingClient(t *testing.T) {
	t.Parallel()
	closed := make(chan struct{})
	var once sync.Once
	addr, _ := serveInProcess(t, timeouts{write: 300 * time.Millisecond}, func(_ net.Conn, st http.ConnState) {
		if st == http.StateClosed {
			once.Do(func() { close(closed) })
		}
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	const requests = 20000
	go func() {
		w := bufio.NewWriter(c)
		for range requests {
			if _, err := w.WriteString("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				return
			}
		}
		w.Flush()
	}()
	select {
	case <-closed:
	case <-time.After(time.Minute):
		t.Fatal("the server still held the connection a minute after the client stopped reading")
	}
	answered := 0
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break // EOF or reset: the server closed it
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answered++
	}
	if answered >= requests {
		t.Fatalf("all %d answers arrived: the server never gave up on the client", answered)
	}
	t.Logf("the server closed the connection after %d of %d pipelined answers", answered, requests)
	_, again := dialUntilClosed(t, addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if got := <-again; !strings.HasPrefix(string(got), "HTTP/1.1 200 OK") {
		t.Errorf("health after the stuck client: %q", got)
	}
}

// TestReliabilitySecretScan runs a whole session, successes and failures of
// every kind, and searches everything the daemon and CLI printed, on both
// streams, and every file they wrote for every token used. A token may
// appear only where it belongs: the daemon's one first-run line, the
// standard output of the create command that minted it (once), and the
// config file of a context that stores it.
func TestReliabilitySecretScan(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	laptop := t.TempDir()
	var printed []string // everything the CLI printed, minus the legitimate spots
	run := func(home string, env []string, args ...string) cliResult {
		r := runHelyos(t, home, "", env, args...)
		printed = append(printed, fmt.Sprintf("helyos %s … (exit %d)\n%s%s", args[0], r.code, r.stdout, r.stderr))
		return r
	}
	if r := run(laptop, nil, "login", d.url, "--ca-fingerprint", d.fp, "--token", d.token, "--name", "prod"); r.code != 0 {
		t.Fatalf("login: exit %d: %s", r.code, r.stderr)
	}
	created := mustRun(t, laptop, nil, "auth", "token", "create", "ci", "--ttl", "3600")
	ci := tokenLineRE.FindString("HELYOS_API_TOKEN=" + strings.TrimSpace(created.stdout))
	if ci == "" {
		t.Fatalf("auth token create printed no token: %q", created.stdout)
	}
	ci = strings.TrimPrefix(ci, "HELYOS_API_TOKEN=")
	printed = append(printed, "helyos auth token create … (exit 0)\n"+strings.Replace(created.stdout, ci, "", 1)+created.stderr)
	bogus := "nxa-api_" + strings.Repeat("5a", 32)
	other := tlsDaemon(t)
	scripts := t.TempDir()
	failing := writeScript(t, scripts, "fail", "exit 1\n")
	closed := "https://127.0.0.1:1"

	run(laptop, nil, "whoami")
	run(laptop, nil, "status")
	run(laptop, nil, "auth", "token", "ls")
	run(laptop, nil, "--token", ci, "whoami")
	run(laptop, []string{"HELYOS_API_TOKEN=" + ci}, "context", "ls")
	run(laptop, nil, "--token", bogus, "whoami")
	run(laptop, nil, "--token", "nxa-api_short", "whoami")
	run(t.TempDir(), nil, "login", d.url, "--ca-fingerprint", other.fp, "--token", ci)
	run(t.TempDir(), nil, "login", d.url, "--token", ci)
	run(t.TempDir(), nil, "login", d.url, "--ca-fingerprint", d.fp, "--token", bogus)
	run(t.TempDir(), nil, "login", closed, "--ca-fingerprint", d.fp, "--token", ci)
	run(t.TempDir(), []string{"CI_TOK=" + ci}, "login", d.url, "--ca-fingerprint", d.fp, "--token-env", "CI_TOK", "--token-command", "x")
	run(t.TempDir(), nil, "login", d.url, "--ca-fingerprint", d.fp, "--token-command", failing)
	run(laptop, nil, "--server", other.url, "whoami")
	run(laptop, nil, "--server", closed, "--token", ci, "whoami")
	run(laptop, nil, "--token", ci, "auth", "token", "revoke", "nope")
	run(laptop, nil, "auth", "token", "revoke", "ci")
	run(laptop, nil, "--token", ci, "whoami") // revoked now
	run(laptop, nil, "--token", ci, "whoami", "--bogus-flag")
	run(laptop, nil, "logout")
	run(laptop, nil, "whoami")
	d.stop(t)
	other.stop(t)

	secrets := map[string]string{"first-run": d.token, "other first-run": other.token, "ci": ci, "bogus": bogus}
	// The daemon's output, minus its one first-run line (exactly once).
	for name, dd := range map[string]*testDaemon{"daemon": d, "other daemon": other} {
		line := "HELYOS_API_TOKEN=" + dd.token + "\n"
		if n := strings.Count(dd.out.String(), line); n != 1 {
			t.Errorf("%s printed its first-run token line %d times", name, n)
		}
		printed = append(printed, name+"\n"+strings.Replace(dd.out.String(), line, "", 1))
	}
	// Every file either side wrote, minus the config files that store a
	// context's token by design.
	for _, root := range []string{d.home, other.home, laptop, scripts} {
		err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || strings.HasPrefix(e.Name(), "config.toml") {
				return err
			}
			data, err := os.ReadFile(path)
			printed = append(printed, path+"\n"+string(data))
			return err
		})
		if err != nil {
			t.Errorf("read what the session wrote: %v", err)
		}
	}
	for _, text := range printed {
		for name, secret := range secrets {
			if strings.Contains(text, secretPart(secret)) {
				t.Errorf("the %s token appears in:\n%s", name, text)
			}
		}
	}
	t.Logf("%d outputs and files searched for %d tokens", len(printed), len(secrets))
}
