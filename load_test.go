package main

// Load and flood measurements against real daemons (issue: authentication
// as fast as a public route). They are benchmarks, never wall-clock
// assertions: the machines are shared. The tests here assert only what does
// not depend on speed, such as counts of Argon2 runs and file writes.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchmarkRoute measures one route over TLS with a keep-alive connection
// against a real daemon.
func benchmarkRoute(b *testing.B, path string, withToken bool) {
	d := tlsDaemon(b)
	client := d.client(b)
	req, _ := http.NewRequest("GET", d.url+path, nil)
	if withToken {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var sink bytes.Buffer
		sink.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}

// BenchmarkMiddleware runs requests through the daemon's full handler chain
// (metrics, headers, routing, bearer parsing, verification, the handler)
// in process, with no network, so the cost of authentication stands alone.
func BenchmarkMiddleware(b *testing.B) {
	srv, token := newTestServer(b)
	h := srv.routes()
	for _, c := range []struct{ name, path, token string }{
		{"health", "/health", ""},
		{"whoami", "/api/v1/whoami", token},
		{"whoami-unknown-token", "/api/v1/whoami", newAPIToken()},
	} {
		b.Run(c.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", c.path, nil)
			if c.token != "" {
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			b.ReportAllocs()
			for b.Loop() {
				h.ServeHTTP(httptest.NewRecorder(), req)
			}
		})
	}
}

func BenchmarkWhoamiTLS(b *testing.B) { benchmarkRoute(b, "/api/v1/whoami", true) }
func BenchmarkHealthTLS(b *testing.B) { benchmarkRoute(b, "/health", false) }

// loadRun sends requests to path from conns keep-alive connections for d
// and returns the requests per second and the latencies seen.
func loadRun(b *testing.B, url, token string, pool *x509.CertPool, conns int, d time.Duration) (float64, []time.Duration) {
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	start := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := pinnedClient(pool)
			defer client.CloseIdleConnections()
			var mine []time.Duration
			for time.Now().Before(stop) {
				req, _ := http.NewRequest("GET", url, nil)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(len(lat)) / time.Since(start).Seconds(), lat
}

func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[int(float64(len(s)-1)*p)]
}

// BenchmarkAuthVsPublic loads one daemon over HTTPS with 16 keep-alive
// connections, alternating rounds of GET /health and of an authenticated
// GET /api/v1/whoami (which goes first changes every round, so neither
// always follows the other's garbage), and reports both rates and their
// ratio (target ≥ 0.95). The token's one Argon2 run happens before the
// clock starts: it is the first request's cost, not the steady state's.
func BenchmarkAuthVsPublic(b *testing.B) {
	d := tlsDaemon(b)
	pool := d.caPool(b)
	if code, _, body := d.do(b, "GET", "/api/v1/whoami", d.token, ""); code != http.StatusOK {
		b.Fatalf("whoami: %d %s", code, body)
	}
	var health, whoami float64
	round := 0
	for b.Loop() {
		runHealth := func() { h, _ := loadRun(b, d.url+"/health", "", pool, 16, time.Second); health += h }
		runWhoami := func() { w, _ := loadRun(b, d.url+"/api/v1/whoami", d.token, pool, 16, time.Second); whoami += w }
		if round%2 == 0 {
			runHealth()
			runWhoami()
		} else {
			runWhoami()
			runHealth()
		}
		round++
	}
	b.ReportMetric(health/float64(b.N), "health-req/s")
	b.ReportMetric(whoami/float64(b.N), "whoami-req/s")
	b.ReportMetric(whoami/health, "ratio")
}

// peakRSS is the daemon's peak resident memory in bytes (Linux).
func peakRSS(tb testing.TB, d *testDaemon) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		tb.Skip("no /proc")
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}

// floodWith sends GET path with bearer tokens from next (none when next is
// nil) on conns connections until stop closes, and returns how many
// requests it sent and how many got a 429 with a Retry-After.
func floodWith(d *testDaemon, pool *x509.CertPool, conns int, path string, next func() string, stop <-chan struct{}) (sent, limited *atomic.Int64) {
	sent, limited = &atomic.Int64{}, &atomic.Int64{}
	for range conns {
		go func() {
			client := pinnedClient(pool)
			defer client.CloseIdleConnections()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", d.url+path, nil)
				if next != nil {
					req.Header.Set("Authorization", "Bearer "+next())
				}
				if resp, err := client.Do(req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					sent.Add(1)
					if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "1" {
						limited.Add(1)
					}
				}
			}
		}()
	}
	return sent, limited
}

// BenchmarkRandomTokenFlood: 16 connections of random well-formed tokens.
// Reports the flood's rate, the Argon2 runs it caused (target 0), the
// auth.failed records it left in the audit log against the 10 s windows it
// spanned (target: at most one per window, all from 127.0.0.1), and a
// valid client's p99 with no flood, under the token flood (target ≤ 2 × the
// quiet p99), and under a flood of the same shape at the public GET /health.
// The last one is the control: on a machine whose cores the load generator
// shares, any full-speed flood slows everyone, and what authentication adds
// is the difference between the two floods.
func BenchmarkRandomTokenFlood(b *testing.B) {
	d := tlsDaemon(b)
	pool := d.caPool(b)
	whoami := d.url + "/api/v1/whoami"
	loadRun(b, whoami, d.token, pool, 1, 100*time.Millisecond) // the token's one Argon2 run
	start := time.Now()
	flood := func(path string, next func() string) (rate float64, valid []time.Duration) {
		stop := make(chan struct{})
		start := time.Now()
		sent, _ := floodWith(d, pool, 16, path, next, stop)
		_, valid = loadRun(b, whoami, d.token, pool, 1, time.Second)
		close(stop)
		return float64(sent.Load()) / time.Since(start).Seconds(), valid
	}
	for b.Loop() {
		_, quiet := loadRun(b, whoami, d.token, pool, 1, time.Second)
		publicRate, public := flood("/health", nil)
		runs := metricValue(b, d, "helyos_argon2_runs_total")
		tokenRate, loud := flood("/api/v1/whoami", newAPIToken)
		b.ReportMetric(metricValue(b, d, "helyos_argon2_runs_total")-runs, "argon2-runs")
		b.ReportMetric(tokenRate, "flood-req/s")
		b.ReportMetric(publicRate, "health-flood-req/s")
		p99Quiet, p99Public, p99Flood := percentile(quiet, 0.99), percentile(public, 0.99), percentile(loud, 0.99)
		b.ReportMetric(float64(p99Quiet.Microseconds()), "p99-quiet-µs")
		b.ReportMetric(float64(p99Public.Microseconds()), "p99-health-flood-µs")
		b.ReportMetric(float64(p99Flood.Microseconds()), "p99-flood-µs")
		b.ReportMetric(float64(p99Flood)/float64(p99Quiet), "p99-flood/quiet")
		b.ReportMetric(float64(p99Flood)/float64(p99Public), "p99-flood/health-flood")
	}
	d.stop(b)
	failed := eventsNamed(readAuditFile(b, filepath.Join(d.dataDir, auditFileName)), "auth.failed")
	b.ReportMetric(float64(len(failed)), "auth.failed-records")
	b.ReportMetric(time.Since(start).Seconds()/auditWindow.Seconds(), "10s-windows")
}

// BenchmarkKnownPrefixFlood is the worst case: the attacker knows the
// lookup keys of 50 real tokens, so every request costs an Argon2 run.
// Reports the daemon's peak memory and that a remembered valid token is
// still answered.
func BenchmarkKnownPrefixFlood(b *testing.B) {
	d := tlsDaemon(b)
	pool := d.caPool(b)
	var prefixes []string
	for i := range 50 {
		prefixes = append(prefixes, d.createToken(b, d.token, fmt.Sprintf("t%d", i), 0)[:8+lookupLen])
	}
	var n atomic.Int64
	next := func() string {
		return prefixes[n.Add(1)%int64(len(prefixes))] + newAPIToken()[8+lookupLen:]
	}
	for b.Loop() {
		runs := metricValue(b, d, "helyos_argon2_runs_total")
		stop := make(chan struct{})
		start := time.Now()
		sent, _ := floodWith(d, pool, 16, "/api/v1/whoami", next, stop)
		_, valid := loadRun(b, d.url+"/api/v1/whoami", d.token, pool, 1, 3*time.Second)
		close(stop)
		elapsed := time.Since(start).Seconds()
		b.ReportMetric(float64(sent.Load())/elapsed, "flood-req/s")
		b.ReportMetric((metricValue(b, d, "helyos_argon2_runs_total")-runs)/elapsed, "argon2-runs/s")
		b.ReportMetric(float64(percentile(valid, 0.99).Microseconds()), "p99-valid-µs")
		b.ReportMetric(peakRSS(b, d)/(1<<20), "peak-RSS-MiB")
	}
}

// timedDuringFlood floods path with tokens from next (none when nil) from
// conns connections and, once the flood has had conns answers, uses fresh
// for the first time and creates a token called name. It fails tb unless
// both succeed, and returns how long each took and the flood's 429s (with
// Retry-After) per second.
func timedDuringFlood(tb testing.TB, d *testDaemon, conns int, path string, next func() string, fresh, name string) (firstUse, create time.Duration, limitedPerSec float64) {
	stop := make(chan struct{})
	defer close(stop)
	start := time.Now()
	sent, limited := floodWith(d, nil, conns, path, next, stop)
	pollUntil(tb, "an answer on each connection of the flood", func() bool { return sent.Load() >= int64(conns) })
	t0 := time.Now()
	if code, _, body := d.do(tb, "GET", "/api/v1/whoami", fresh, ""); code != http.StatusOK {
		tb.Fatalf("first use of another token during the flood: %d %s", code, body)
	}
	firstUse = time.Since(t0)
	t0 = time.Now()
	d.createToken(tb, d.token, name, 0)
	create = time.Since(t0)
	return firstUse, create, float64(limited.Load()) / time.Since(start).Seconds()
}

// wrongSecrets returns a source of tokens with victim's lookup key and
// random secrets: each one costs an Argon2 run unless it is turned away.
func wrongSecrets(victim string) func() string {
	return func() string { return victim[:8+lookupLen] + newAPIToken()[8+lookupLen:] }
}

// TestKnownPrefixFloodGets429: during a 1,000-connection flood of wrong
// secrets for one real lookup key, the flood gets 429s with Retry-After
// while another token's first use and a token create succeed (their times
// are BenchmarkOnePrefixFlood's; TestArgonQueuePerKey holds the structure).
func TestKnownPrefixFloodGets429(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 1,000 connections")
	}
	t.Parallel()
	d := startDaemon(t, t.TempDir(), []string{"--max-conns-per-ip", "2000"})
	victim := d.createToken(t, d.token, "victim", 0)
	firstUse, create, limited := timedDuringFlood(t, d, 1000, "/api/v1/whoami", wrongSecrets(victim), d.createToken(t, d.token, "fresh", 0), "during")
	if limited == 0 {
		t.Error("the flood got no 429 with Retry-After: 1")
	}
	t.Logf("during the flood (%.0f 429s/s): first use %v, create %v", limited, firstUse, create)
}

// BenchmarkOnePrefixFlood reports how long another token's first use and a
// token create take during a 1,000-connection flood of wrong secrets for
// one real lookup key (target: under a second each), and the flood's 429
// rate. The control is a flood of the same shape at the public GET /health:
// on a machine whose cores the load generator shares, any such flood slows
// everyone, and what the Argon2 queue adds is the difference.
func BenchmarkOnePrefixFlood(b *testing.B) {
	d := startDaemon(b, b.TempDir(), []string{"--max-conns-per-ip", "2000"})
	victim := d.createToken(b, d.token, "victim", 0)
	var sum [5]float64
	for i := 0; b.Loop(); i++ {
		fresh := func(kind string) string { return d.createToken(b, d.token, fmt.Sprint(kind, i), 0) }
		f, c, l := timedDuringFlood(b, d, 1000, "/api/v1/whoami", wrongSecrets(victim), fresh("fresh"), fmt.Sprint("during", i))
		hf, hc, _ := timedDuringFlood(b, d, 1000, "/health", nil, fresh("control"), fmt.Sprint("control-during", i))
		for j, v := range []float64{f.Seconds() * 1000, c.Seconds() * 1000, l, hf.Seconds() * 1000, hc.Seconds() * 1000} {
			sum[j] += v
		}
	}
	for j, unit := range []string{"first-use-ms", "create-ms", "429/s", "health-flood-first-use-ms", "health-flood-create-ms"} {
		b.ReportMetric(sum[j]/float64(b.N), unit)
	}
}

// TestConnectionFlood: 20,000 connections from 127.0.0.2, each trying a TLS
// handshake and a GET /health and then held open, leave the daemon serving
// at most --max-conns-per-ip of them, answering whoami on new connections
// from 127.0.0.1 all along, with a peak RSS under 200 MiB. Not parallel: it
// needs most of this process's file descriptors.
func TestConnectionFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 20,000 connections")
	}
	n := min(20000, raiseOwnFileLimit(20000+500)-500)
	switch {
	case n < 1000 && os.Getenv("CI") != "":
		t.Fatalf("the open-file limit allows only %d connections", n)
	case n < 1000:
		t.Skipf("the open-file limit allows only %d connections", n)
	case n < 20000:
		t.Logf("the open-file limit allows %d connections, not 20,000", n)
	}
	d := tlsDaemon(t)
	tlsConfig := &tls.Config{RootCAs: d.caPool(t), ServerName: "localhost"}
	whoami := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig, DisableKeepAlives: true}, Timeout: 30 * time.Second}
	var lat []time.Duration
	var failed []string
	flooding, whoamiDone := make(chan struct{}), make(chan struct{})
	go func() { // a new connection from 127.0.0.1 for each whoami
		defer close(whoamiDone)
		for i := 0; i == 0 || !isClosed(flooding); i++ {
			req, _ := http.NewRequest("GET", d.url+"/api/v1/whoami", nil)
			req.Header.Set("Authorization", "Bearer "+d.token)
			t0 := time.Now()
			resp, err := whoami.Do(req)
			if err != nil {
				failed = append(failed, err.Error())
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failed = append(failed, resp.Status)
			}
			lat = append(lat, time.Since(t0))
			time.Sleep(20 * time.Millisecond) // pacing: this client is not the flood
		}
	}()
	start := time.Now()
	conns, served := floodConnections(t, d, tlsConfig, n)
	close(flooding)
	<-whoamiDone
	elapsed := time.Since(start)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	rss := peakRSS(t, d) / (1 << 20)
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.cmd.Process.Pid))
	t.Logf("%d connections from 127.0.0.2 in %v, %d served; daemon: %d open fds, peak RSS %.1f MiB; %d whoami from 127.0.0.1 meanwhile, p50 %v, max %v",
		len(conns), elapsed.Round(time.Millisecond), served, len(fds), rss, len(lat), percentile(lat, 0.5), percentile(lat, 1))
	if served < 1 || served > 256 {
		t.Errorf("%d of the flood's connections served, want 1 to 256 (--max-conns-per-ip)", served)
	}
	if len(failed) > 0 {
		t.Errorf("%d whoami calls from 127.0.0.1 failed during the flood, first: %s", len(failed), failed[0])
	}
	if rss >= 200 {
		t.Errorf("peak RSS %.1f MiB, want under 200", rss)
	}
}

// floodConnections opens n connections from 127.0.0.2 from 8 goroutines;
// on each it tries a TLS handshake and GET /health, and leaves it open. It
// returns them all and how many were answered.
func floodConnections(t *testing.T, d *testDaemon, tlsConfig *tls.Config, n int) ([]net.Conn, int) {
	var mu sync.Mutex
	var conns []net.Conn
	var served atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 20 * time.Second}
			for range n/8 + min(1, max(0, n%8-w)) {
				c, err := dialer.Dial("tcp", "127.0.0.1:"+d.port)
				if err != nil {
					t.Errorf("dial from 127.0.0.2: %v", err)
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				tc := tls.Client(c, tlsConfig)
				tc.SetDeadline(time.Now().Add(20 * time.Second))
				if tc.Handshake() == nil && answers(tc, healthRequest) == http.StatusOK {
					served.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return conns, int(served.Load())
}

// raiseOwnFileLimit lifts this process's open-file limit towards want, as
// far as the hard limit (or privilege to raise it) allows, and returns it.
func raiseOwnFileLimit(want uint64) int {
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if lim.Max < want && syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
		return int(want)
	}
	lim.Cur = lim.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	return int(lim.Cur)
}

// TestRandomTokensNeverReachArgon2 sends a few thousand random well-formed
// tokens and counts: no Argon2 run, every one refused and counted as an
// auth failure; at the default log level, no reason is logged.
func TestRandomTokensNeverReachArgon2(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	runs := metricValue(t, d, "helyos_argon2_runs_total")
	failures := metricValue(t, d, "helyos_auth_failures_total")
	const conns, each = 8, 250
	if got := sendRandomTokens(t, d, conns, each); got != conns*each {
		t.Errorf("%d of %d random tokens refused", got, conns*each)
	}
	if got := metricValue(t, d, "helyos_argon2_runs_total") - runs; got != 0 {
		t.Errorf("random tokens caused %v Argon2 runs, want 0", got)
	}
	if got := metricValue(t, d, "helyos_auth_failures_total") - failures; got != conns*each {
		t.Errorf("auth failures grew by %v, want %d", got, conns*each)
	}
	if strings.Contains(d.out.String(), "debug:") {
		t.Errorf("debug lines at the default log level:\n%s", d.out.String())
	}
}

// TestLastUsedNotWrittenOnRequestPath: authenticated requests through the
// daemon's handler chain change the last-use time the API shows but not the
// token store on disk; the flush (every minute and at shutdown, as
// TestRestartKeepsState sees) writes it. In process, so no flush tick can
// land during the requests however slow the machine.
func TestLastUsedNotWrittenOnRequestPath(t *testing.T) {
	t.Parallel()
	srv, token := newTestServer(t)
	store, h := srv.tokens, srv.routes()
	before := mustReadFile(t, store.path)
	fi, _ := os.Stat(store.path)
	var body string
	for range 50 {
		rec := serveOnce(h, "GET", "/api/v1/whoami", token, "")
		if body = rec.Body.String(); rec.Code != http.StatusOK {
			t.Fatalf("whoami: %d %s", rec.Code, body)
		}
	}
	if !strings.Contains(body, `"last_used_at":"`) {
		t.Fatalf("whoami shows no last use: %s", body)
	}
	after := mustReadFile(t, store.path)
	fi2, _ := os.Stat(store.path)
	if !bytes.Equal(before, after) || !fi2.ModTime().Equal(fi.ModTime()) {
		t.Fatal("the token store was rewritten while serving requests")
	}
	if err := store.flushLastUsed(); err != nil {
		t.Fatal(err)
	}
	if flushed := mustReadFile(t, store.path); !strings.Contains(string(flushed), `"last_used_at"`) {
		t.Fatalf("last use not flushed:\n%s", flushed)
	}
}
