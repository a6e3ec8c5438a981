package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// noAudit records nothing: for store tests about other things.
var noAudit recordChange = func(tokenInfo, string) error { return nil }

// newTestAudit opens an audit log in dir and closes it when the test ends.
func newTestAudit(t testing.TB, dir string, maxSize int64, now func() time.Time) *auditLog {
	t.Helper()
	a, err := openAuditLog(dir, maxSize, now, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	return a
}

// auditLines returns the lines of an audit log file, newlines included.
func auditLines(t testing.TB, path string) []string {
	t.Helper()
	data := mustReadFile(t, path)
	lines := strings.SplitAfter(string(data), "\n")
	return lines[:len(lines)-1] // after the last newline: nothing, or a torn line

}

func readAuditFile(t testing.TB, path string) []auditRecord {
	t.Helper()
	var out []auditRecord
	for _, line := range auditLines(t, path) {
		var rec auditRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("%s: %q: %v", path, line, err)
		}
		out = append(out, rec)
	}
	return out
}

func eventsNamed(recs []auditRecord, event string) []auditRecord {
	var out []auditRecord
	for _, r := range recs {
		if r.Event == event {
			out = append(out, r)
		}
	}
	return out
}

func str(s *string) string {
	if s == nil {
		return "<null>"
	}
	return *s
}

// TestAuditChainAcrossRestarts: the exact line format, nulls, UTC times, a
// chain that carries on after a restart, a line torn by a crash removed, and
// a stop unclean when the log does not end in daemon.stopped.
func TestAuditChainAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.FixedZone("CET", 3600))}
	a := newTestAudit(t, dir, defaultAuditMaxSize, clock.now)
	if err := a.record("token.created", "alice", "127.0.0.1", "ci", outcomeSuccess, map[string]any{"scope": "admin"}); err != nil {
		t.Fatal(err)
	}
	a.record("daemon.stopped", "", "", "", outcomeSuccess, nil)
	a.close()
	if m := permOf(t, a.path(0)); m != 0o600 {
		t.Errorf("audit.log mode %o, want 600", m)
	}
	f, _ := os.OpenFile(a.path(0), os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"seq":3,"ti`) // a crash in the middle of a write
	f.Close()

	b := newTestAudit(t, dir, defaultAuditMaxSize, clock.now)
	b.record("daemon.started", "", "", "", outcomeSuccess, nil)
	if a.unclean || b.unclean {
		t.Errorf("unclean stop: a new log %v, one ending in daemon.stopped and a torn line %v", a.unclean, b.unclean)
	}
	lines := auditLines(t, a.path(0))
	want := `{"seq":1,"time":"2026-01-02T02:04:05.6Z","event":"token.created","actor":"alice","remote":"127.0.0.1","target":"ci","outcome":"success","detail":{"scope":"admin"},"prev":"` + zeroHash + `"}` + "\n"
	if len(lines) != 3 || lines[0] != want {
		t.Fatalf("audit.log:\n%s\nwant first line:\n%s", strings.Join(lines, ""), want)
	}
	if !strings.Contains(lines[1], `"actor":null,"remote":null,"target":null,"outcome":"success","detail":null`) {
		t.Errorf("empty fields are not null: %s", lines[1])
	}
	for i, rec := range readAuditFile(t, a.path(0)) {
		if rec.Seq != uint64(i+1) || (i > 0 && rec.Prev != hashLine([]byte(lines[i-1]))) {
			t.Errorf("line %d: seq %d prev %s does not chain", i+1, rec.Seq, rec.Prev)
		}
	}
	if _, err := verifyChain([]string{a.path(0)}); err != nil {
		t.Error(err)
	}
	b.close() // no daemon.stopped: a crash
	if c := newTestAudit(t, dir, defaultAuditMaxSize, clock.now); !c.unclean {
		t.Error("a log ending in daemon.started does not make an unclean stop")
	}
}

// TestAuditChangeRecords: the recorder the token store calls writes the
// event, actor, address, token name, outcome, scope and expiry, for every
// token change; once the undoing of a change cannot be recorded, nothing more
// is.
func TestAuditChangeRecords(t *testing.T) {
	a := newTestAudit(t, t.TempDir(), defaultAuditMaxSize, time.Now)
	exp := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	for _, event := range []string{"token.created", "token.rotated", "token.revoked"} {
		if err := a.change(event, "admin", "10.0.0.1")(tokenInfo{Name: "ci", Scope: "read", ExpiresAt: &exp}, outcomeSuccess); err != nil {
			t.Fatal(err)
		}
	}
	a.change("token.created", "", "")(tokenInfo{Name: "bootstrap", Scope: "admin"}, outcomeFailure)
	lines := auditLines(t, a.path(0))
	for i, event := range []string{"token.created", "token.rotated", "token.revoked"} {
		want := `"event":"` + event + `","actor":"admin","remote":"10.0.0.1","target":"ci","outcome":"success","detail":{"allow_from":null,"expires_at":"2026-02-01T00:00:00Z","scope":"read"}`
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d: %s\nwant %s", i+1, lines[i], want)
		}
	}
	if want := `"actor":null,"remote":null,"target":"bootstrap","outcome":"failure","detail":{"allow_from":null,"expires_at":null,"scope":"admin"}`; !strings.Contains(lines[3], want) {
		t.Errorf("a change by the daemon itself: %s", lines[3])
	}
	good := a.f
	readOnly, err := os.Open(a.path(0)) // every write to it fails in the kernel
	if err != nil {
		t.Fatal(err)
	}
	defer readOnly.Close()
	a.f = readOnly
	if err := a.change("token.revoked", "admin", "10.0.0.1")(tokenInfo{Name: "ci"}, outcomeFailure); err == nil {
		t.Fatal("recorded through a read-only file")
	}
	a.f = good
	if err := a.record("daemon.stopped", "", "", "", outcomeSuccess, nil); err == nil || !strings.Contains(err.Error(), "could not be recorded") {
		t.Errorf("the log says ci was revoked, which was undone, and goes on: %v", err)
	}
}

// TestAuditRotation: at the size limit audit.log becomes audit.log.1 and so
// on, five kept; the chain runs on from file to file and across a restart
// that finds audit.log empty.
func TestAuditRotation(t *testing.T) {
	dir := t.TempDir()
	a := newTestAudit(t, dir, 1024, time.Now)
	for i := range 60 {
		if err := a.record("token.created", "alice", "127.0.0.1", fmt.Sprint("t", i), outcomeSuccess, nil); err != nil {
			t.Fatal(err)
		}
	}
	files := auditFiles(dir)
	if all, _ := os.ReadDir(dir); len(all) != auditKeep+1 || len(files) != auditKeep+1 || files[0] != a.path(auditKeep) || files[auditKeep] != a.path(0) {
		t.Fatalf("files %v (%d in the folder), want audit.log.5 to audit.log", files, len(all))
	}
	for _, f := range files {
		if fi, _ := os.Stat(f); fi.Size() > 1024 || permOf(t, f) != 0o600 {
			t.Errorf("%s: %d bytes, mode %o", f, fi.Size(), permOf(t, f))
		}
	}
	sum, err := verifyChain(files)
	if err != nil || sum.LastSeq != 60 || sum.FirstSeq <= 1 {
		t.Fatalf("verify: %+v %v", sum, err)
	}
	// A crash between a rotation and the next write leaves audit.log empty:
	// the chain goes on from audit.log.1.
	a.close()
	rotated := readAuditFile(t, a.path(1))
	os.WriteFile(a.path(0), nil, 0o600)
	b := newTestAudit(t, dir, 1024, time.Now)
	if err := b.record("daemon.started", "", "", "", outcomeSuccess, nil); err != nil {
		t.Fatal(err)
	}
	if sum, err := verifyChain(auditFiles(dir)); err != nil || sum.LastSeq != rotated[len(rotated)-1].Seq+1 {
		t.Errorf("after a restart on an empty audit.log: %+v %v", sum, err)
	}
}

// TestAuditTallies: refusals are counted in memory and written once per
// event, actor and address per window, with their count and reasons; past
// maxTallies addresses they share one record.
func TestAuditTallies(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	a := newTestAudit(t, dir, defaultAuditMaxSize, clock.now)
	for range 5 {
		a.tally("auth.failed", "", "10.0.0.1", "unknown")
		a.tally("connections.limited", "", "10.0.0.1", "per-address")
	}
	a.tally("auth.failed", "", "10.0.0.1", "malformed")
	a.tally("auth.failed", "", "10.0.0.2", "unknown")
	a.tally("scope.denied", "reader", "10.0.0.2", "POST /api/v1/tokens")
	a.later("token.expired", "", "10.0.0.3", "old")
	clock.advance(auditWindow - time.Second)
	if err := a.flush(false); err != nil {
		t.Fatal(err)
	}
	if recs := readAuditFile(t, a.path(0)); len(recs) != 1 || recs[0].Event != "token.expired" || str(recs[0].Target) != "old" {
		t.Fatalf("before the window ended: %+v", recs)
	}
	clock.advance(time.Second)
	a.tally("auth.failed", "", "10.0.0.1", "unknown") // counted in the window that ends now
	a.flush(false)
	got := map[string]string{}
	for _, r := range readAuditFile(t, a.path(0))[1:] {
		reasons, _ := json.Marshal(r.Detail["reasons"])
		got[r.Event+" "+str(r.Actor)+" "+str(r.Remote)] = fmt.Sprint(r.Detail["count"], " ", string(reasons), " ", r.Outcome)
	}
	want := map[string]string{
		"auth.failed <null> 10.0.0.1":         `7 {"malformed":1,"unknown":6} denied`,
		"auth.failed <null> 10.0.0.2":         `1 {"unknown":1} denied`,
		"connections.limited <null> 10.0.0.1": `5 {"per-address":5} denied`,
		"scope.denied reader 10.0.0.2":        `1 {"POST /api/v1/tokens":1} denied`,
	}
	if !maps.Equal(got, want) {
		t.Errorf("tallies written:\n%v\nwant\n%v", got, want)
	}
	for i := range maxTallies + 5 {
		a.tally("auth.failed", "", fmt.Sprintf("10.1.%d.%d", i/256, i%256), "unknown")
	}
	a.flush(true)
	recs := readAuditFile(t, a.path(0))[5:]
	shared := slices.IndexFunc(recs, func(r auditRecord) bool { return str(r.Remote) == "*" })
	if len(recs) != maxTallies+1 || shared < 0 || recs[shared].Detail["count"] != 5.0 {
		t.Errorf("%d records for %d addresses, the shared one at %d", len(recs), maxTallies+5, shared)
	}
}

// TestAuditFullDisk: on a full file system (a tmpfs of 64 KiB), a record
// that does not fit fails and is cut off the file whole, so the chain stays
// intact; once there is room again, recording goes on where it stopped.
func TestAuditFullDisk(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		skipOrFailInCI(t, "cannot mount a tmpfs (not root?): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	a := newTestAudit(t, dir, defaultAuditMaxSize, time.Now)
	a.record("daemon.started", "", "", "", outcomeSuccess, nil) // audit.log gets a page, with room left in it
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for err == nil { // whole pages, until there is none left
		_, err = filler.Write(make([]byte, 4096))
	}
	filler.Close()
	written := 1
	for err = nil; err == nil; written++ {
		if written > 100 {
			t.Fatal("100 records fit on a full file system")
		}
		err = a.record("token.created", "alice", "127.0.0.1", fmt.Sprint("t", written), outcomeSuccess, nil)
	}
	if !errors.Is(err, errAuditUnavailable) || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("record on a full disk: %v", err)
	}
	if sum, err := verifyChain([]string{a.path(0)}); err != nil || sum.Records != written-1 {
		t.Fatalf("after the failed write, %d records expected: %+v %v", written-1, sum, err)
	}
	os.Remove(filepath.Join(dir, "filler"))
	if err := a.record("daemon.stopped", "", "", "", outcomeSuccess, nil); err != nil {
		t.Fatalf("with room again: %v", err)
	}
	if sum, err := verifyChain([]string{a.path(0)}); err != nil || sum.LastSeq != uint64(written) {
		t.Errorf("chain after the disk was freed: %+v %v", sum, err)
	}
}

// newTestServer is an in-process daemon with a real store and audit log,
// and two admin tokens (created unrecorded): admin, whose secret it
// returns, and keeper.
func newTestServer(t testing.TB) (*server, string) {
	t.Helper()
	dir := t.TempDir()
	store := newTokenStore(filepath.Join(dir, tokenStoreFile), nil, time.Now)
	token, _, err := store.create(context.Background(), "admin", "", 0, noAudit)
	if err == nil {
		_, _, err = store.create(context.Background(), "keeper", "", 0, noAudit) // admin is not the last admin
	}
	if err != nil {
		t.Fatal(err)
	}
	audit := newTestAudit(t, dir, defaultAuditMaxSize, time.Now)
	return &server{tokens: store, metrics: newMetrics(), logger: log.New(io.Discard, "", 0), audit: audit, keepAlive: eventKeepAlive}, token
}

func serveOnce(h http.Handler, method, path, token, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestAuditWriteFailureFailsClosed: when the audit log cannot be written,
// token create, rotate and revoke answer 503 and change nothing; once it can again,
// they work and the chain is whole.
func TestAuditWriteFailureFailsClosed(t *testing.T) {
	s, token := newTestServer(t)
	h := s.routes()
	storeBefore, _ := os.ReadFile(s.tokens.path)
	good := s.audit.f
	readOnly, err := os.Open(s.audit.path(0)) // every write to it fails in the kernel
	if err != nil {
		t.Fatal(err)
	}
	defer readOnly.Close()
	s.audit.f = readOnly
	if rec := serveOnce(h, "POST", "/api/v1/tokens", token, `{"name":"ci"}`); rec.Code != 503 || !strings.Contains(rec.Body.String(), "audit log cannot be written") {
		t.Errorf("create without an audit log: %d %s", rec.Code, rec.Body)
	}
	if rec := serveOnce(h, "DELETE", "/api/v1/tokens/keeper", token, ""); rec.Code != 503 {
		t.Errorf("revoke without an audit log: %d %s", rec.Code, rec.Body)
	}
	if rec := serveOnce(h, "POST", "/api/v1/tokens/admin/rotate", token, `{}`); rec.Code != 503 {
		t.Errorf("rotate without an audit log: %d %s", rec.Code, rec.Body)
	}
	if storeAfter, _ := os.ReadFile(s.tokens.path); !bytes.Equal(storeBefore, storeAfter) || len(s.tokens.list()) != 2 {
		t.Fatalf("the store changed: %+v", s.tokens.list())
	}
	if rec := serveOnce(h, "GET", "/api/v1/whoami", token, ""); rec.Code != 200 {
		t.Errorf("the unrecorded rotation took effect: %d", rec.Code)
	}
	s.audit.f = good
	if rec := serveOnce(h, "POST", "/api/v1/tokens", token, `{"name":"ci"}`); rec.Code != 201 {
		t.Fatalf("create once the audit log works: %d %s", rec.Code, rec.Body)
	}
	recs := readAuditFile(t, s.audit.path(0))
	if len(recs) != 1 || recs[0].Event != "token.created" || str(recs[0].Actor) != "admin" || str(recs[0].Target) != "ci" {
		t.Errorf("records: %+v", recs)
	}
	if _, err := verifyChain([]string{s.audit.path(0)}); err != nil {
		t.Error(err)
	}
}

// stallingWriter is an event stream client that stops reading: every write
// blocks until gate closes.
type stallingWriter struct {
	header  http.Header
	gate    chan struct{}
	stalled chan struct{}
	mu      sync.Mutex
	got     bytes.Buffer
}

func (w *stallingWriter) Header() http.Header { return w.header }
func (w *stallingWriter) WriteHeader(int)     {}
func (w *stallingWriter) Flush()              {}
func (w *stallingWriter) Write(p []byte) (int, error) {
	select {
	case <-w.gate:
	default:
		w.stalled <- struct{}{}
		<-w.gate
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got.Write(p)
}

func (w *stallingWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got.String()
}

// openStream starts an event stream at url over real HTTP and returns a reader
// positioned after the live marker.
func openStream(t *testing.T, c *http.Client, url, token string, header ...string) *bufio.Reader {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return bufio.NewReader(resp.Body)
}

// streamStatus opens an event stream at path and returns its status.
func streamStatus(t *testing.T, d *testDaemon, path, token string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", d.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := d.client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// nextEvent reads lines up to and including the next blank line after a
// line starting with prefix, and returns that block.
func nextEvent(t *testing.T, r *bufio.Reader, prefix string) string {
	t.Helper()
	var block strings.Builder
	found := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended while waiting for %q (got %q): %v", prefix, block.String(), err)
		}
		block.WriteString(line)
		found = found || strings.HasPrefix(line, prefix)
		if line == "\n" && found {
			return block.String()
		}
		if line == "\n" {
			block.Reset()
		}
	}
}

// TestEventsSlowSubscriber: a subscriber that stops reading never holds up
// the daemon or another subscriber; when it reads again it gets what it had
// buffered, then a warning with the number of records it missed, then the
// live records.
func TestEventsSlowSubscriber(t *testing.T) {
	s, token := newTestServer(t)
	h := s.routes()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	live := openStream(t, srv.Client(), srv.URL+"/api/v1/events", token)
	nextEvent(t, live, ": live")
	s.audit.mu.Lock()
	s.audit.subBuffer = 2 // for the slow subscriber
	s.audit.mu.Unlock()
	slow := &stallingWriter{header: http.Header{}, gate: make(chan struct{}), stalled: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest("GET", "/api/v1/events", nil).WithContext(ctx)
	req.Header.Set("Authorization", "Bearer "+token)
	done := make(chan struct{})
	go func() { h.ServeHTTP(slow, req); close(done) }()
	<-slow.stalled // subscribed, and stuck on its first write
	for i := range 10 {
		if err := s.audit.record("token.created", "admin", "127.0.0.1", fmt.Sprint("t", i), outcomeSuccess, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 10; i++ {
		if ev := nextEvent(t, live, "id: "); !strings.HasPrefix(ev, fmt.Sprintf("id: %d\nevent: token.created\ndata: {\"seq\":%d,", i, i)) {
			t.Fatalf("live subscriber, event %d: %q", i, ev)
		}
	}
	close(slow.gate)
	waitFor := func(s string) {
		pollUntil(t, fmt.Sprintf("the slow subscriber writing %q", s), func() bool { return strings.Contains(slow.String(), s) }, slow)
	}
	waitFor("id: 2\n") // its buffer is drained
	s.audit.record("daemon.stopped", "", "", "", outcomeSuccess, nil)
	waitFor("id: 11\n")
	cancel()
	<-done
	var ids []string
	for _, line := range strings.Split(slow.String(), "\n") {
		if strings.HasPrefix(line, "id: ") || strings.HasPrefix(line, "data: {\"warning") {
			ids = append(ids, line)
		}
	}
	want := []string{"id: 0", "id: 1", "id: 2", `data: {"warning":"missed 8 events"}`, "id: 11"}
	if !slices.Equal(ids, want) {
		t.Errorf("slow subscriber got %q, want %q", ids, want)
	}
	if ev := nextEvent(t, live, "id: "); !strings.HasPrefix(ev, "id: 11\nevent: daemon.stopped\n") {
		t.Errorf("live subscriber after the slow one caught up: %q", ev)
	}
}

// TestEventsStreamOutlivesTimeouts: a stream stays open past the server's
// read and write timeouts, and gets keep-alive comments.
func TestEventsStreamOutlivesTimeouts(t *testing.T) {
	s, token := newTestServer(t)
	s.keepAlive = 50 * time.Millisecond
	srv := httptest.NewUnstartedServer(s.routes())
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	stream := openStream(t, srv.Client(), srv.URL+"/api/v1/events", token)
	if ev := nextEvent(t, stream, ": live"); ev != "id: 0\n: live\n\n" {
		t.Fatalf("stream start: %q", ev)
	}
	time.Sleep(3 * 200 * time.Millisecond) // both deadlines are long past
	nextEvent(t, stream, ": keep-alive")
	s.audit.record("daemon.started", "", "", "", outcomeSuccess, nil)
	if ev := nextEvent(t, stream, "id: 1"); !strings.HasPrefix(ev, "id: 1\nevent: daemon.started\ndata: {\"seq\":1,") {
		t.Errorf("event after the timeouts: %q", ev)
	}
}

// TestEventsRefusals: a token is needed, ?since must make sense, the
// number of streams is bounded, and a stream ends, freeing its place, once
// its token is revoked (without the news of it) or expires.
func TestEventsRefusals(t *testing.T) {
	s, token := newTestServer(t)
	clock := &fakeClock{t: time.Now()}
	s.tokens.now, s.keepAlive = clock.now, 20*time.Millisecond
	s.audit.maxSubs = 1
	h := s.routes()
	if rec := serveOnce(h, "GET", "/api/v1/events", "", ""); rec.Code != 401 {
		t.Errorf("no token: %d", rec.Code)
	}
	if rec := serveOnce(h, "GET", "/api/v1/events?since=yesterday", token, ""); rec.Code != 400 || !strings.Contains(rec.Body.String(), "neither a record number nor an RFC 3339 time") {
		t.Errorf("bad since: %d %s", rec.Code, rec.Body)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	client := *srv.Client()
	client.Timeout = time.Minute // a stream that outlives its token fails the test, not hangs it
	watcher, _, _ := s.tokens.create(context.Background(), "watcher", scopeRead, 0, noAudit)
	brief, _, _ := s.tokens.create(context.Background(), "brief", scopeRead, time.Hour, noAudit)
	for _, c := range []struct {
		name, token string
		end         func()
	}{
		{"revoked", watcher, func() {
			if rec := serveOnce(h, "DELETE", "/api/v1/tokens/watcher", token, ""); rec.Code != 204 {
				t.Fatalf("revoke: %d %s", rec.Code, rec.Body)
			}
		}},
		{"expired", brief, func() { clock.advance(time.Hour) }},
	} {
		stream := openStream(t, &client, srv.URL+"/api/v1/events", c.token)
		nextEvent(t, stream, ": live")
		if rec := serveOnce(h, "GET", "/api/v1/events", token, ""); rec.Code != 503 || !strings.Contains(rec.Body.String(), "event streams are open") {
			t.Errorf("one stream too many: %d %s", rec.Code, rec.Body)
		}
		c.end()
		// Read to the stream's end, failing at the first event sent after it.
		lines := bufio.NewScanner(stream)
		for lines.Scan() {
			if strings.HasPrefix(lines.Text(), "event:") {
				t.Fatalf("%s token: the stream went on: %q", c.name, lines.Text())
			}
		}
		if err := lines.Err(); err != nil {
			t.Fatalf("%s token: %v", c.name, err)
		}
	}
	openStream(t, &client, srv.URL+"/api/v1/events", token) // the places are free again
}

// TestAuditRecordsRealActions drives a real daemon and reads its audit.log:
// every event with its fields, no secret, hash or lookup prefix anywhere,
// and a chain that `helyos audit verify` passes.
func TestAuditRecordsRealActions(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	secret := func(code int, body string) string {
		var answer struct{ Token string }
		if json.Unmarshal([]byte(body), &answer); code != 201 || answer.Token == "" {
			t.Fatalf("no new secret: %d %s", code, body)
		}
		return answer.Token
	}
	secrets := []string{d.token, d.createToken(t, d.token, "ci", 0)}
	code, _, body := d.do(t, "POST", "/api/v1/tokens/ci/rotate", d.token, `{"grace_secs":0}`)
	secrets = append(secrets, secret(code, body))
	d.do(t, "DELETE", "/api/v1/tokens/ci", d.token, "")
	code, _, body = d.do(t, "POST", "/api/v1/tokens", d.token, `{"name":"reader","scope":"read","allow_from":["127.0.0.0/8"]}`)
	reader := secret(code, body)
	if code, _, body := d.do(t, "POST", "/api/v1/tokens", reader, `{"name":"x"}`); code != 403 {
		t.Fatalf("a read token creating one: %d %s", code, body)
	}
	short := d.createToken(t, d.token, "short", 1)
	secrets = append(secrets, reader, short)
	waitStatus(t, d, short, 401)
	d.do(t, "GET", "/api/v1/whoami", short, "") // a second refused use: no second token.expired
	random := newAPIToken()
	d.do(t, "GET", "/api/v1/whoami", random, "")
	d.do(t, "GET", "/api/v1/tokens", "", "")
	d.stop(t)
	given := newAPIToken()
	d2args := []string{"--tls", "on", "--advertise-addr", "helyos.test", "--api-token", given}
	d2 := startDaemon(t, home, d2args)
	_, _, d2ver := d2.do(t, "GET", "/api/v1/version", "", "")
	d2.cmd.Process.Kill() // a crash: no daemon.stopped
	<-d2.exited
	startDaemon(t, home, d2args).stop(t)

	// Refusals are written off the request path, so they are checked apart
	// from the rest, which is in the order of the actions.
	recs := readAuditFile(t, filepath.Join(d.dataDir, auditFileName))
	var got, later []string
	byEvent := map[string]auditRecord{}
	for _, r := range recs {
		line := fmt.Sprintf("%s %s %s %s %s", r.Event, str(r.Actor), str(r.Remote), str(r.Target), r.Outcome)
		switch r.Event {
		case "token.expired", "auth.failed", "scope.denied":
			later = append(later, line)
			if len(got) != 8 {
				t.Errorf("%s written after %d records, want after the 8 of the first run", r.Event, len(got))
			}
		default:
			got = append(got, line)
		}
		byEvent[r.Event] = r
	}
	want := []string{
		"cert.reissued <null> <null> server.pem success",
		"token.created <null> <null> bootstrap success",
		"daemon.started <null> <null> <null> success",
		"token.created bootstrap 127.0.0.1 ci success",
		"token.rotated bootstrap 127.0.0.1 ci success",
		"token.revoked bootstrap 127.0.0.1 ci success",
		"token.created bootstrap 127.0.0.1 reader success",
		"token.created bootstrap 127.0.0.1 short success",
		"daemon.stopped <null> <null> <null> success",
		"cert.reissued <null> <null> server.pem success",
		"token.rotated <null> <null> bootstrap success",
		"daemon.started <null> <null> <null> success",
		"daemon.started <null> <null> <null> success",
		"daemon.stopped <null> <null> <null> success",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("audit.log events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	slices.Sort(later)
	if want := []string{"auth.failed <null> 127.0.0.1 <null> denied", "scope.denied reader 127.0.0.1 <null> denied", "token.expired <null> 127.0.0.1 short denied"}; !slices.Equal(later, want) {
		t.Fatalf("refusals: %q, want %q", later, want)
	}
	started, failed, denied := recs[2].Detail, byEvent["auth.failed"].Detail, byEvent["scope.denied"].Detail
	var ver struct{ Version string }
	json.Unmarshal([]byte(d2ver), &ver)
	if started["tls"] != "self-signed" || started["bind"] != "127.0.0.1:"+d.port || started["version"] != ver.Version || ver.Version == "" || started["advertise"] != nil || started["unclean_stop"] != false {
		t.Errorf("daemon.started detail: %v", started)
	}
	second := recs[len(recs)-5:]
	if second[2].Detail["advertise"] != "helyos.test" || second[2].Detail["unclean_stop"] != false || second[0].Detail["reason"] != "names changed" {
		t.Errorf("second start: %v, %v", second[2].Detail, second[0].Detail)
	}
	if second[3].Detail["unclean_stop"] != true {
		t.Errorf("the start after a crash: %v", second[3].Detail)
	}
	if reasons, _ := json.Marshal(failed["reasons"]); failed["count"] != 4.0 || string(reasons) != `{"expired":2,"missing":1,"unknown":1}` {
		t.Errorf("auth.failed detail: %v", failed)
	}
	if reasons, _ := json.Marshal(denied["reasons"]); denied["count"] != 1.0 || string(reasons) != `{"POST /api/v1/tokens":1}` {
		t.Errorf("scope.denied detail: %v", denied)
	}
	if reader := recs[6].Detail; reader["scope"] != "read" || fmt.Sprint(reader["allow_from"]) != "[127.0.0.0/8]" || recs[7].Detail["expires_at"] == nil {
		t.Errorf("token details: %v %v", reader, recs[7].Detail)
	}
	for _, r := range recs {
		if r.Time.Location() != time.UTC || time.Since(r.Time) > time.Hour {
			t.Errorf("record %d: time %v", r.Seq, r.Time)
		}
	}
	mustRun(t, home, nil, "audit", "verify", "--data-dir", d.dataDir)

	audit, _ := os.ReadFile(filepath.Join(d.dataDir, auditFileName))
	stored, _ := readTokenFile(filepath.Join(d.dataDir, tokenStoreFile))
	never := []string{random[8:], given[8:]}
	for _, s := range secrets {
		never = append(never, s[8:])
	}
	for _, r := range stored {
		never = append(never, r.Lookup, r.Hash)
	}
	for _, s := range never {
		if bytes.Contains(audit, []byte(s)) {
			t.Errorf("audit.log holds a secret, a hash or a lookup prefix: %.20s…", s)
		}
	}
}

// TestAuditVerifyCommand: `helyos audit verify` passes an intact chain that
// spans rotated files, and names the file and line where an edited, a
// removed or a reordered record breaks it.
func TestAuditVerifyCommand(t *testing.T) {
	t.Parallel()
	src := t.TempDir()
	a := newTestAudit(t, src, 1024, time.Now)
	for i := range 20 {
		a.record("token.created", "alice", "127.0.0.1", fmt.Sprint("t", i), outcomeSuccess, nil)
	}
	a.close()
	files := auditFiles(src)
	if len(files) < 4 {
		t.Fatalf("want at least 4 files, got %v", files)
	}
	editLines := func(dir, name string, edit func([]string) []string) {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(strings.Join(edit(auditLines(t, path)), "")), 0o600)
	}
	cases := []struct {
		name, file string
		edit       func([]string) []string
		want       []string // in the error; none: intact
	}{
		{"intact", "", nil, nil},
		{"edited", "audit.log.2", func(l []string) []string { l[2] = strings.Replace(l[2], "alice", "mallory", 1); return l },
			[]string{"audit.log.2:4: prev is not the SHA-256 of the line before it, ", "audit.log.2:3: that line was changed"}},
		{"deleted", "audit.log.1", func(l []string) []string { return slices.Delete(l, 2, 3) },
			[]string{"audit.log.1:3: seq ", "does not follow seq", "audit.log.1:2: records were removed"}},
		{"reordered", "audit.log", func(l []string) []string { l[1], l[2] = l[2], l[1]; return l },
			[]string{"audit.log:2: seq "}},
		{"last line of a rotated file edited", "audit.log.2", func(l []string) []string {
			l[len(l)-1] = strings.Replace(l[len(l)-1], "alice", "mallory", 1)
			return l
		}, []string{"audit.log.1:1: prev is not the SHA-256"}},
		{"seq renumbered", "audit.log.1", func(l []string) []string { l[1] = strings.Replace(l[1], `"seq":`, `"seq":1`, 1); return l },
			[]string{"audit.log.1:2: seq "}},
		{"torn last line", "audit.log", func(l []string) []string { l[len(l)-1] = l[len(l)-1][:40]; return l },
			[]string{"is incomplete (no newline)"}},
		{"huge line", "audit.log.1", func(l []string) []string { l[1] = strings.Repeat(" ", 70<<10) + l[1]; return l },
			[]string{"audit.log.1:2: longer than 65536 bytes"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range files {
				copyFile(t, f, filepath.Join(dir, filepath.Base(f)))
			}
			if c.edit != nil {
				editLines(dir, c.file, c.edit)
			}
			r := runHelyos(t, t.TempDir(), "", nil, "audit", "verify", "--data-dir", dir)
			if c.want == nil {
				if r.code != 0 || !strings.HasPrefix(r.stdout, "intact: 20 records, seq 1 to 20, in ") {
					t.Errorf("intact chain: exit %d\n%s%s", r.code, r.stdout, r.stderr)
				}
				return
			}
			wantFail(t, r, 1, append(c.want, "helyos: error: audit log chain broken: "+dir)...)
		})
	}
	// Files can be given by hand, oldest first; given in the wrong order
	// they do not chain.
	mustRun(t, t.TempDir(), nil, append([]string{"audit", "verify"}, files...)...)
	wantFail(t, runHelyos(t, t.TempDir(), "", nil, "audit", "verify", files[1], files[0]), 1, "does not follow")
	wantFail(t, runHelyos(t, t.TempDir(), "", nil, "audit", "verify", "--data-dir", t.TempDir()), 1, "no audit log in", "hint: pass --data-dir")
}

// TestEventsReplay: Last-Event-ID and ?since= (a seq or a time) replay the
// records after the one named from disk, across rotated files, then the
// stream goes live with no gap and no repeat; files with none of them are
// not read.
func TestEventsReplay(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t, "--audit-max-size", "1KiB")
	for _, name := range []string{"a", "b", "c"} {
		d.createToken(t, d.token, name, 0)
	}
	if files := auditFiles(d.dataDir); len(files) < 2 {
		t.Fatalf("no rotation to replay across: %v", files)
	}
	// 1 cert.reissued, 2 token.created bootstrap, 3 daemon.started, 4-6 a, b, c
	events := d.url + "/api/v1/events"
	streams := map[string]*bufio.Reader{
		"Last-Event-ID": openStream(t, d.client(t), events, d.token, "Last-Event-ID", "3"),
		"since=3":       openStream(t, d.client(t), events+"?since=3", d.token),
		"since=TIME":    openStream(t, d.client(t), events+"?since="+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), d.token),
		"since=0":       openStream(t, d.client(t), events+"?since=0", d.token),
		"live only":     openStream(t, d.client(t), events, d.token),
	}
	for how, stream := range streams {
		first := 4
		switch how {
		case "since=TIME", "since=0":
			first = 1
		case "live only":
			first = 7
		}
		for seq := first; seq <= 6; seq++ {
			if ev := nextEvent(t, stream, "id: "); !strings.HasPrefix(ev, fmt.Sprintf("id: %d\nevent: ", seq)) {
				t.Fatalf("%s: replayed %q, want seq %d", how, ev, seq)
			}
		}
		if ev := nextEvent(t, stream, ": live"); ev != "id: 6\n: live\n\n" {
			t.Fatalf("%s: live marker %q", how, ev)
		}
	}
	d.createToken(t, d.token, "d", 0)
	for how, stream := range streams {
		if ev := nextEvent(t, stream, "id: "); !strings.HasPrefix(ev, "id: 7\nevent: token.created\n") || !strings.Contains(ev, `"target":"d"`) {
			t.Errorf("%s: live event %q", how, ev)
		}
	}
	future := openStream(t, d.client(t), events+"?since="+time.Now().Add(time.Hour).UTC().Format(time.RFC3339), d.token)
	if ev := nextEvent(t, future, ": live"); ev != "id: 7\n: live\n\n" {
		t.Errorf("since a future time: %q", ev)
	}
	// A reconnection reads no file whose records it has seen: not even one
	// with a line too long to read.
	oldest := auditFiles(d.dataDir)[0]
	data, _ := os.ReadFile(oldest)
	os.WriteFile(oldest, append([]byte(strings.Repeat(" ", 70<<10)+"\n"), data...), 0o600)
	if ev := nextEvent(t, openStream(t, d.client(t), events, d.token, "Last-Event-ID", "7"), ": live"); ev != "id: 7\n: live\n\n" {
		t.Errorf("reconnection after the last record: %q", ev)
	}
}

// TestCLIEvents: `helyos events` lists what is on disk as a table or JSON
// lines and ends; --since takes a seq or a duration; --follow streams, and
// after the daemon restarts it reconnects with Last-Event-ID and misses
// nothing (daemon.stopped is written after the stream closed, so it can only
// arrive by replay).
func TestCLIEvents(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	d.createToken(t, d.token, "ci", 0)
	r := mustRun(t, home, nil, "events")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 5 || !strings.HasPrefix(lines[0], "TIME") ||
		!strings.Contains(lines[4], "token.created") || !strings.Contains(lines[4], "bootstrap") || !strings.Contains(lines[4], "127.0.0.1") {
		t.Errorf("events table:\n%s", r.stdout)
	}
	r = mustRun(t, home, nil, "events", "--json", "--since", "2")
	var seqs []uint64
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var rec auditRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a JSON line: %q", line)
		}
		seqs = append(seqs, rec.Seq)
	}
	if !slices.Equal(seqs, []uint64{3, 4}) {
		t.Errorf("--since 2 gave seqs %v", seqs)
	}
	if r := mustRun(t, home, nil, "events", "--since", "1h", "--json"); strings.Count(r.stdout, "\n") != 4 {
		t.Errorf("--since 1h:\n%s", r.stdout)
	}
	wantFail(t, runHelyos(t, home, "", nil, "events", "--since", "yesterday"), 2, "--since \"yesterday\" is neither")

	follow := exec.Command(helyosBin, "events", "--follow", "--since", "0", "--json")
	out, errOut := &syncBuffer{}, &syncBuffer{}
	follow.Stdout, follow.Stderr = out, errOut
	startProc(t, follow, home, nil)
	waitOutput := func(s string) {
		t.Helper()
		pollUntil(t, fmt.Sprintf("events --follow printing %q", s), func() bool { return strings.Contains(out.String(), s) }, out, errOut)
	}
	waitOutput(`"target":"ci"`)
	d.stop(t)
	d2 := startDaemon(t, home, []string{"--tls", "on", "--port", d.port})
	d2.createToken(t, d.token, "after", 0)
	waitOutput(`"target":"after"`)
	var events []string
	for i, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var rec auditRecord
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Seq != uint64(i+1) {
			t.Fatalf("line %d is not record %d: %q", i+1, i+1, line)
		}
		events = append(events, rec.Event)
	}
	if want := []string{"cert.reissued", "token.created", "daemon.started", "token.created", "daemon.stopped", "daemon.started", "token.created"}; !slices.Equal(events, want) {
		t.Errorf("followed events %q, want %q", events, want)
	}
	if !strings.Contains(errOut.String(), "reconnecting in") {
		t.Errorf("no word of the reconnection: %s", errOut.String())
	}
}

// TestAuditFloodOneRecordPerWindow: thousands of random tokens from one
// address make at most one auth.failed record per 10 s window, whose counts
// add up to every refusal.
func TestAuditFloodOneRecordPerWindow(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	start := time.Now()
	const conns, each = 8, 250
	if refused := sendRandomTokens(t, d, conns, each); refused != conns*each {
		t.Fatalf("%d of %d random tokens refused", refused, conns*each)
	}
	d.stop(t)
	windows := int(time.Since(start)/auditWindow) + 1
	failed := eventsNamed(readAuditFile(t, filepath.Join(d.dataDir, auditFileName)), "auth.failed")
	total := 0.0
	for _, r := range failed {
		if str(r.Remote) != "127.0.0.1" {
			t.Errorf("auth.failed from %s", str(r.Remote))
		}
		total += r.Detail["count"].(float64)
	}
	if len(failed) == 0 || len(failed) > windows || total != conns*each {
		t.Errorf("%d auth.failed records (at most %d) counting %v refusals (want %d)", len(failed), windows, total, conns*each)
	}
}
