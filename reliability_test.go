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
// random points of its save. Afterwards the file always parses, is 0600,
// and holds every change whose command had exited 0; the change in flight
// is either fully there or not at all.
func TestReliabilityCLIKilledWhileSaving(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	path := cliConfigPath(home)
	// possible[c] holds the projects context c may show: the last one a run
	// confirmed, and those of later runs that were killed (a kill can land
	// after the rename).
	possible := map[string]map[string]bool{}
	const rounds = 150
	kills := 0
	for i := range rounds {
		name := fmt.Sprintf("c%d", i%5)
		project := fmt.Sprintf("p%d", i)
		cmd := exec.Command(helyosBin, "--server", "https://127.0.0.1:1", "context", "set", name, "--project", project)
		cmd.Env = testEnv(home)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		select {
		case err = <-done:
		case <-time.After(time.Duration(rand.IntN(6000)) * time.Microsecond):
			cmd.Process.Kill()
			err = <-done
		}
		if err == nil {
			possible[name] = map[string]bool{project: true}
		} else {
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
				t.Fatalf("round %d: context set failed on its own: %v", i, err)
			}
			kills++
			if possible[name] == nil {
				possible[name] = map[string]bool{"": true} // may not exist yet
			}
			possible[name][project] = true
		}
		cfg, loadErr := loadConfig(path)
		if loadErr != nil {
			t.Fatalf("round %d: after a kill the config does not parse: %v", i, loadErr)
		}
		for n, ok := range possible {
			got := ""
			if c := cfg.Context(n); c != nil {
				got = c.Project
			}
			if !ok[got] {
				t.Fatalf("round %d: context %s shows project %q, want one of %v", i, n, got, ok)
			}
		}
		if _, err := os.Stat(path); err == nil && permOf(t, path) != 0o600 {
			t.Fatalf("round %d: config mode %04o", i, permOf(t, path))
		}
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
	t.Logf("%d rounds, %d killed before they finished, %d temporary files left by kills, removed by the next save", rounds, kills, len(leftovers))
	if kills == 0 || kills == rounds {
		t.Errorf("the random kill points missed the save window (kills=%d of %d)", kills, rounds)
	}
}

// TestReliabilityDaemonKilledWhileWriting SIGKILLs the daemon while a client
// creates and revokes tokens. After each restart every acknowledged create
// still verifies, every acknowledged revoke still refuses, and the store is
// intact and 0600.
func TestReliabilityDaemonKilledWhileWriting(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, nil)
	admin := d.token
	created := map[string]string{} // name → secret, acknowledged
	revoked := map[string]bool{}   // acknowledged revokes
	revoking := map[string]bool{}  // revokes sent: the kill may land after the save, before the answer
	n := 0
	const rounds = 4
	for round := range rounds {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var mu sync.Mutex
		var killedAt, failedAt time.Time
		var failure error
		fail := func(err error) {
			mu.Lock()
			failure, failedAt = err, time.Now()
			mu.Unlock()
		}
		acked := 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 5 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				i := n
				n++
				mu.Unlock()
				name := fmt.Sprintf("t%d", i)
				secret, err := createOverHTTP(c, d.url, admin, name, 0)
				if err != nil {
					fail(err) // the daemon died under us, we hope
					return
				}
				mu.Lock()
				created[name] = secret
				acked++
				if i%2 == 0 {
					revoking[name] = true
				}
				mu.Unlock()
				if i%2 == 0 {
					if err := revokeOverHTTP(c, d.url, admin, name); err != nil {
						fail(err)
						return
					}
					mu.Lock()
					revoked[name] = true
					acked++
					mu.Unlock()
				}
			}
		}()
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		mu.Lock()
		killedAt = time.Now()
		mu.Unlock()
		d.cmd.Process.Kill()
		<-d.exited
		close(stop)
		wg.Wait()
		if failure != nil && failedAt.Before(killedAt) {
			t.Fatalf("round %d: a request failed before the kill: %v", round, failure)
		}
		if acked == 0 {
			t.Fatalf("round %d: nothing was acknowledged before the kill", round)
		}

		store := filepath.Join(d.dataDir, tokenStoreFile)
		if _, err := readTokenFile(store); err != nil {
			t.Fatalf("round %d: the token store does not parse after SIGKILL: %v", round, err)
		}
		if m := permOf(t, store); m != 0o600 {
			t.Fatalf("round %d: token store mode %04o", round, m)
		}
		// Besides what the kill left, a planted temporary of ours must go and
		// another program's must stay.
		foreign := filepath.Join(d.dataDir, ".notes.txt.tmp-1")
		for _, p := range []string{filepath.Join(d.dataDir, ".tokens.json.tmp-planted"), foreign} {
			if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		d = startDaemon(t, home, nil)
		if left, _ := filepath.Glob(filepath.Join(d.dataDir, ".*.tmp-*")); len(left) != 1 || left[0] != foreign {
			t.Errorf("round %d: after restart the temporary files are %v, want only %s", round, left, foreign)
		}
		os.Remove(foreign)
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
				for deadline := time.Now().Add(time.Minute); ok.Load() < 30; {
					if time.Now().After(deadline) {
						t.Errorf("token %s: verifiers not accepted within a minute (%d)", name, ok.Load())
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
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
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
// reads the answers is cut off by the write timeout instead of holding a
// connection and its goroutine forever.
func TestReliabilityNonReadingClient(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the write timeout")
	}
	t.Parallel()
	d := startDaemon(t, t.TempDir(), nil) // plain HTTP on loopback
	addr := strings.TrimPrefix(d.url, "http://")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	const requests = 20000
	go func() {
		req := "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
		w := bufio.NewWriter(c)
		for range requests {
			if _, err := w.WriteString(req); err != nil {
				return
			}
		}
		w.Flush()
	}()
	time.Sleep(serverWriteTimeout + 5*time.Second)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	answered := 0
	br := bufio.NewReader(c)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			if ok := asNetError(err, &ne); ok && ne.Timeout() {
				t.Fatalf("the connection was still open %s after the client stopped reading (%d answers drained)", serverWriteTimeout+35*time.Second, answered)
			}
			break // EOF or reset: the daemon closed it
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answered++
	}
	if answered >= requests {
		t.Fatalf("all %d answers arrived: the daemon never gave up on the client", answered)
	}
	t.Logf("the daemon closed the connection after %d of %d pipelined answers", answered, requests)
	if code, _, _ := d.do(t, "GET", "/health", "", ""); code != http.StatusOK {
		t.Errorf("health after the stuck client: %d", code)
	}
}

func asNetError(err error, target *net.Error) bool {
	ne, ok := err.(net.Error)
	if ok {
		*target = ne
	}
	return ok
}

// TestReliabilitySecretScan runs a whole session, successes and failures of
// every kind, and searches everything the daemon and CLI printed and every
// file they wrote for every token used. A token may appear only where it
// belongs: the daemon's one first-run line, the answer of the create command
// that minted it, and the config file of a context that stores it.
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
	mustRun(t, laptop, nil, "login", d.url, "--ca-fingerprint", d.fp, "--token", d.token, "--name", "prod")
	created := mustRun(t, laptop, nil, "auth", "token", "create", "ci", "--ttl", "3600")
	ci := tokenLineRE.FindString("HELYOS_API_TOKEN=" + strings.TrimSpace(created.stdout))
	if ci == "" {
		t.Fatalf("auth token create printed no token: %q", created.stdout)
	}
	ci = strings.TrimPrefix(ci, "HELYOS_API_TOKEN=")
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
		filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || strings.HasPrefix(e.Name(), "config.toml") {
				return nil
			}
			data, _ := os.ReadFile(path)
			printed = append(printed, path+"\n"+string(data))
			return nil
		})
	}
	for _, text := range printed {
		for name, secret := range secrets {
			if strings.Contains(text, strings.TrimPrefix(secret, "nxa-api_")) {
				t.Errorf("the %s token appears in:\n%s", name, text)
			}
		}
	}
	t.Logf("%d outputs and files searched for %d tokens", len(printed), len(secrets))
}
