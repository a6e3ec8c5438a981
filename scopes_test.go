package main

// Black-box tests of scopes, source-address bindings, rotation, the last
// admin and --max-ttl (SPEC §5), against real daemons on loopback.

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// specRoutes is SPEC §5's table: the scope each route needs, "" for public.
var specRoutes = []struct{ pattern, scope string }{
	{"GET /health", ""},
	{"GET /metrics", ""},
	{"GET /api/v1/version", ""},
	{"GET /api/v1/ca", ""},
	{"GET /api/v1/whoami", scopeRead},
	{"GET /api/v1/tokens", scopeRead},
	{"POST /api/v1/tokens", scopeAdmin},
	{"POST /api/v1/tokens/{name}/rotate", scopeAdmin},
	{"DELETE /api/v1/tokens/{name}", scopeAdmin},
	{"GET /api/v1/events", scopeRead},
	// Unknown API paths: 401 without a token, 404 with any (SPEC §2);
	// any other unknown path: 404.
	{"/api/v1/", scopeRead},
	{"/api/v1", scopeRead},
	{"/", ""},
}

// TestRouteTableMatchesSpec: the route table, public routes included, is
// SPEC §5 with the same scopes, no route more or less, and follows SPEC's
// rule: a protected GET is read, everything else admin.
func TestRouteTableMatchesSpec(t *testing.T) {
	spec := map[string]string{}
	for _, r := range specRoutes {
		spec[r.pattern] = r.scope
	}
	registered := map[string]bool{}
	for _, r := range (&server{}).routeTable() {
		registered[r.pattern] = true
		want, inSpec := spec[r.pattern]
		switch {
		case !inSpec:
			t.Errorf("route %q is not in SPEC §5", r.pattern)
		case r.scope != want:
			t.Errorf("route %q needs scope %q, SPEC §5 says %q", r.pattern, r.scope, want)
		case r.scope != "" && strings.Contains(r.pattern, " ") && strings.HasPrefix(r.pattern, "GET ") != (r.scope == scopeRead):
			t.Errorf("route %q: GET routes need read, all others admin", r.pattern)
		}
	}
	for _, r := range specRoutes {
		if !registered[r.pattern] {
			t.Errorf("SPEC §5 route %q is not in the route table", r.pattern)
		}
	}
}

// concreteRequest turns a SPEC pattern into a request an admin's call
// would succeed with, and the status it answers then.
func concreteRequest(pattern string) (method, path, body string, ok int) {
	method, path, _ = strings.Cut(pattern, " ")
	switch pattern {
	case "/api/v1/", "/api/v1":
		return "GET", "/api/v1/nothing-here", "", 404
	case "/":
		return "GET", "/nothing-here", "", 404
	case "POST /api/v1/tokens":
		return method, path, `{"name":"minted"}`, 201
	case "POST /api/v1/tokens/{name}/rotate":
		return method, "/api/v1/tokens/rotate-me/rotate", `{"grace_secs":0}`, 201
	case "DELETE /api/v1/tokens/{name}":
		return method, "/api/v1/tokens/revoke-me", "", 204
	}
	return method, path, "", 200
}

// TestScopeTable: every SPEC route × anonymous, read and admin → status,
// the 403 naming the token, its scope and the scope needed. Refused calls
// change nothing.
func TestScopeTable(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	reader := createWith(t, d, d.token, `{"name":"reader","scope":"read"}`)
	victims := map[string]string{}
	for _, name := range []string{"rotate-me", "revoke-me"} {
		victims[name] = d.createToken(t, d.token, name, 0)
	}
	_, _, listBefore := d.do(t, "GET", "/api/v1/tokens", d.token, "")
	roles := []struct{ name, token string }{{"anonymous", ""}, {"read", reader}, {"admin", d.token}}
	for _, role := range roles {
		for _, r := range specRoutes {
			method, path, body, ok := concreteRequest(r.pattern)
			want, wantBody := ok, ""
			switch {
			case r.scope != "" && role.token == "":
				want, wantBody = 401, unauthorizedBody
			case r.scope == scopeAdmin && role.name == "read":
				want, wantBody = 403, `{"error":"token \"reader\" has scope read; this needs admin"}`
			}
			var code int
			var got string
			if r.pattern == "GET /api/v1/events" && want == 200 { // a stream: the status, not the endless body
				code = streamStatus(t, d, path, role.token)
			} else {
				code, _, got = d.do(t, method, path, role.token, body)
			}
			if code != want {
				t.Errorf("%s: %s %s = %d %s, want %d", role.name, method, path, code, got, want)
			} else if wantBody != "" {
				jsonEqual(t, got, wantBody)
			}
		}
		if role.name != "read" {
			continue
		}
		// Other methods and spellings of the admin routes reach no admin
		// handler either (the client follows the daemon's path-cleaning 307).
		for _, spelling := range []string{"PUT /api/v1/tokens", "PATCH /api/v1/tokens/revoke-me", "OPTIONS /api/v1/tokens/revoke-me",
			"HEAD /api/v1/tokens/revoke-me", "POST /api/v1//tokens", "POST /api/v1/tokens/", "DELETE /api/v1/tokens/revoke-me/",
			"DELETE /api/v1/tokens//revoke-me", "DELETE /api/v1/./tokens/revoke-me", "DELETE /api/v1/tokens/%72evoke-me",
			"POST /api/v1/tokens/rotate-me%2Frotate", "POST /api/v1/tokens/rotate-me/rotate/", "POST /API/v1/tokens"} {
			method, path, _ := strings.Cut(spelling, " ")
			if code, _, body := d.do(t, method, path, role.token, `{"name":"sneaky","grace_secs":0}`); code != 403 && code != 404 {
				t.Errorf("read: %s = %d %s, want 403 or 404", spelling, code, body)
			}
		}
		// Nothing the anonymous and read callers tried took effect.
		lastUsed := regexp.MustCompile(`"last_used_at":(null|"[^"]*")`)
		if _, _, list := d.do(t, "GET", "/api/v1/tokens", d.token, ""); lastUsed.ReplaceAllString(list, "") != lastUsed.ReplaceAllString(listBefore, "") {
			t.Errorf("refused calls changed the token list:\n%s\nto\n%s", listBefore, list)
		}
		for name, secret := range victims {
			if code, _, _ := d.do(t, "GET", "/api/v1/whoami", secret, ""); code != 200 {
				t.Errorf("token %s stopped working after refused calls: %d", name, code)
			}
		}
	}
}

// createWith posts body to POST /api/v1/tokens and returns the secret.
func createWith(t *testing.T, d *testDaemon, admin, body string) string {
	t.Helper()
	code, _, answer := d.do(t, "POST", "/api/v1/tokens", admin, body)
	var created struct{ Token string }
	if json.Unmarshal([]byte(answer), &created); code != 201 || created.Token == "" {
		t.Fatalf("create %s: %d %s", body, code, answer)
	}
	return created.Token
}

// clientFrom is a client of d whose connections leave from source address
// ip (a loopback address: 127.0.0.0/8 is all loopback on Linux).
func clientFrom(t *testing.T, d *testDaemon, ip string) *http.Client {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: d.caPool(t)}, DialContext: dialer.DialContext}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// whoamiFrom sends GET /api/v1/whoami with token through c.
func whoamiFrom(t *testing.T, c *http.Client, d *testDaemon, token string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", d.url+"/api/v1/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

// TestBoundTokens: a token with allow_from is accepted only from those
// addresses, checked on every request whether it was verified before or
// not; from anywhere else it gets the very 401 an unknown token gets, and
// the reason is counted for operators.
func TestBoundTokens(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t) // bound to 127.0.0.1
	one, two := clientFrom(t, d, "127.0.0.1"), clientFrom(t, d, "127.0.0.2")
	tokens := map[string]string{}
	for name, cidrs := range map[string]string{
		"two": `"127.0.0.2/32"`, "loopback": `"127.0.0.0/8"`, "v6": `"::1/128"`, "multi": `"10.0.0.0/8","127.0.0.1/32"`,
	} {
		tokens[name] = createWith(t, d, d.token, fmt.Sprintf(`{"name":%q,"ttl_secs":3600,"allow_from":[%s]}`, name, cidrs))
	}
	_, unknownHeader, unknownBody := whoamiFrom(t, one, d, "nxa-api_"+strings.Repeat("0", 64))
	refusals := 0
	for _, c := range []struct {
		token, from string
		client      *http.Client
		want        int
	}{
		{"two", "127.0.0.1", one, 401}, // first use, from the wrong address
		{"two", "127.0.0.2", two, 200},
		{"two", "127.0.0.1", one, 401}, // remembered, still from the wrong address
		{"loopback", "127.0.0.1", one, 200},
		{"loopback", "127.0.0.2", two, 200},
		{"v6", "127.0.0.1", one, 401},
		{"multi", "127.0.0.1", one, 200},
		{"multi", "127.0.0.2", two, 401},
	} {
		code, header, body := whoamiFrom(t, c.client, d, tokens[c.token])
		if code != c.want {
			t.Errorf("token %s from %s: %d %s, want %d", c.token, c.from, code, body, c.want)
			continue
		}
		if code == 200 {
			if !strings.Contains(body, `"allow_from":[`) {
				t.Errorf("whoami of a bound token does not show its bindings: %s", body)
			}
			continue
		}
		refusals++
		delete(header, "Date")
		delete(unknownHeader, "Date")
		if body != unknownBody || fmt.Sprint(header) != fmt.Sprint(unknownHeader) {
			t.Errorf("token %s from %s is refused unlike an unknown token:\n%v %s\nvs\n%v %s", c.token, c.from, header, body, unknownHeader, unknownBody)
		}
	}
	// From elsewhere a real token costs what an unknown one does: no Argon2
	// run and no cache hit (so neither timing nor /metrics tells it is
	// real), and it is not recorded as used.
	elsewhere := createWith(t, d, d.token, `{"name":"elsewhere","allow_from":["127.0.0.2/32"]}`)
	counters := []string{"helyos_argon2_runs_total", "helyos_token_cache_hits_total"}
	before := []float64{metricValue(t, d, counters[0]), metricValue(t, d, counters[1])}
	for _, token := range []string{elsewhere, elsewhere, tokens["two"]} {
		if code, _, _ := whoamiFrom(t, one, d, token); code != 401 {
			t.Errorf("a token bound to 127.0.0.2 from 127.0.0.1: %d", code)
		}
		refusals++
	}
	for i, name := range counters {
		if got := metricValue(t, d, name); got != before[i] {
			t.Errorf("tokens from the wrong address moved %s from %v to %v", name, before[i], got)
		}
	}
	if _, _, list := d.do(t, "GET", "/api/v1/tokens", d.token, ""); !strings.Contains(list, `"name":"elsewhere","scope":"admin","created_at":`) || !regexp.MustCompile(`"name":"elsewhere"[^}]*"last_used_at":null`).MatchString(list) {
		t.Errorf("a token only refused for its address shows a last use: %s", list)
	}
	// The public count has no reason (SPEC §5); the audit log has.
	if got := metricValue(t, d, "helyos_auth_failures_total"); got != float64(refusals+1) {
		t.Errorf("helyos_auth_failures_total = %v, want %d", got, refusals+1)
	}
	d.stop(t)
	reasons := map[string]float64{}
	for _, r := range eventsNamed(readAuditFile(t, filepath.Join(d.dataDir, auditFileName)), "auth.failed") {
		for reason, n := range r.Detail["reasons"].(map[string]any) {
			reasons[reason] += n.(float64)
		}
	}
	if want := map[string]float64{"address": float64(refusals), "unknown": 1}; !maps.Equal(reasons, want) {
		t.Errorf("audit log reasons %v, want %v", reasons, want)
	}
}

// rotate calls POST /api/v1/tokens/NAME/rotate and returns the answer and
// when the call was sent and answered.
func rotate(t *testing.T, d *testDaemon, admin, name string, grace int) (created map[string]any, sent, answered time.Time) {
	t.Helper()
	sent = time.Now()
	code, _, body := d.do(t, "POST", "/api/v1/tokens/"+name+"/rotate", admin, fmt.Sprintf(`{"grace_secs":%d}`, grace))
	answered = time.Now()
	if code != 201 || json.Unmarshal([]byte(body), &created) != nil {
		t.Fatalf("rotate %s: %d %s", name, code, body)
	}
	return created, sent, answered
}

// pollGraceEnd polls with the old secret until it is refused: every request
// sent after the grace period (counted from the answer) is refused, and none
// that finished before it (counted from the request, less the second the
// stored deadline may be rounded down by) is.
func pollGraceEnd(t *testing.T, d *testDaemon, old string, sent, answered time.Time, grace time.Duration) {
	t.Helper()
	for deadline := answered.Add(grace + 2*time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		start := time.Now()
		code, _, _ := d.do(t, "GET", "/api/v1/whoami", old, "")
		switch {
		case code == 200 && start.After(answered.Add(grace)):
			t.Fatalf("old secret accepted %v after its grace ended", start.Sub(answered.Add(grace)))
		case code == 401 && time.Now().Before(sent.Add(grace-time.Second)):
			t.Fatalf("old secret refused %v before its grace ended", time.Until(sent.Add(grace)))
		case code == 401:
			return
		}
	}
	t.Fatal("old secret never refused")
}

// TestRotation: over the API, a rotated token keeps its name, scope,
// bindings and expiry; without grace the old secret is refused on the next
// request, with grace on the first request after it, also across a restart.
func TestRotation(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, []string{"--tls", "on"})
	admin := d.token
	first := createWith(t, d, admin, `{"name":"ci","scope":"read","ttl_secs":86400,"allow_from":["127.0.0.0/8"]}`)
	_, _, before := d.do(t, "GET", "/api/v1/whoami", first, "")
	rotated, _, _ := rotate(t, d, admin, "ci", 0)
	second, _ := rotated["token"].(string)
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", first, ""); code != 401 {
		t.Errorf("old secret on the next request after a rotation without grace: %d", code)
	}
	code, _, after := d.do(t, "GET", "/api/v1/whoami", second, "")
	if code != 200 {
		t.Fatalf("new secret: %d %s", code, after)
	}
	strip := regexp.MustCompile(`"(created_at|last_used_at)":(null|"[^"]*")`)
	if strip.ReplaceAllString(before, "") != strip.ReplaceAllString(after, "") {
		t.Errorf("rotation changed the token:\n%s\n%s", before, after)
	}

	rotated, sent, answered := rotate(t, d, admin, "ci", 2)
	third, _ := rotated["token"].(string)
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", third, ""); code != 200 {
		t.Errorf("new secret at once: %d", code)
	}
	pollGraceEnd(t, d, second, sent, answered, 2*time.Second)

	rotated, sent, answered = rotate(t, d, admin, "ci", 3)
	fourth, _ := rotated["token"].(string)
	d.stop(t)
	d = startDaemon(t, home, []string{"--tls", "on"})
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", fourth, ""); code != 200 {
		t.Errorf("new secret after a restart: %d", code)
	}
	pollGraceEnd(t, d, third, sent, answered, 3*time.Second)
	for _, c := range []struct {
		name, body string
		want       int
	}{
		{"unknown", `{"grace_secs":0}`, 404},
		{"ci", `{"grace_secs":-1}`, 400},
		{"ci", `{"grace":1}`, 400},
		{"ci", ``, 400},
	} {
		if code, _, body := d.do(t, "POST", "/api/v1/tokens/"+c.name+"/rotate", admin, c.body); code != c.want {
			t.Errorf("rotate %s %s: %d %s, want %d", c.name, c.body, code, body, c.want)
		}
	}
}

// TestLastAdminRefused: revoking the last active admin token is a 409 with
// a way out; read tokens do not count as admins.
func TestLastAdminRefused(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	lastAdmin := func(token, name string) {
		t.Helper()
		code, _, body := d.do(t, "DELETE", "/api/v1/tokens/"+name, token, "")
		jsonEqual(t, body, `{"error":"token \"`+name+`\" is the last active admin token; revoking it would lock every admin out: create another admin token first, or restart the daemon with --api-token"}`)
		if code != 409 {
			t.Errorf("revoke the last admin %s: %d", name, code)
		}
	}
	lastAdmin(d.token, "bootstrap")
	reader := createWith(t, d, d.token, `{"name":"reader","scope":"read"}`)
	lastAdmin(d.token, "bootstrap")
	second := d.createToken(t, d.token, "second", 0)
	if code, _, body := d.do(t, "DELETE", "/api/v1/tokens/bootstrap", second, ""); code != 204 {
		t.Fatalf("revoke bootstrap with another admin: %d %s", code, body)
	}
	lastAdmin(second, "second")
	if code, _, _ := d.do(t, "DELETE", "/api/v1/tokens/reader", second, ""); code != 204 {
		t.Errorf("revoke a read token: %d", code)
	}
	if code, _, _ := d.do(t, "GET", "/api/v1/whoami", reader, ""); code != 401 {
		t.Errorf("revoked read token: %d", code)
	}
}

// TestMaxTTL: with --max-ttl, created and rotated tokens must expire within
// it (400 naming the limit, also for no TTL); the bootstrap token is exempt
// and the token list says so, but rotating it over the API would mint a
// secret that never expires, so that is refused.
func TestMaxTTL(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	d := startDaemon(t, home, nil)
	forever := d.createToken(t, d.token, "forever", 0)
	d.stop(t)
	d = startDaemon(t, home, []string{"--max-ttl", "1h"})
	limit := `the token would outlive this daemon's --max-ttl of 1h0m0s; `
	for _, c := range []struct {
		method, path, body string
		want               int
		msg                string
	}{
		{"POST", "/api/v1/tokens", `{"name":"a"}`, 400, limit + `give it a ttl_secs (--ttl) of at most 3600 seconds`},
		{"POST", "/api/v1/tokens", `{"name":"b","ttl_secs":3601}`, 400, limit + `give it a ttl_secs (--ttl) of at most 3600 seconds`},
		{"POST", "/api/v1/tokens/forever/rotate", `{"grace_secs":0}`, 400, limit + `rotation keeps the expiry, so revoke it and create one with a ttl_secs (--ttl) of at most 3600 seconds`},
		{"POST", "/api/v1/tokens", `{"name":"c","ttl_secs":3600}`, 201, `"name":"c"`},
		{"POST", "/api/v1/tokens/c/rotate", `{"grace_secs":0}`, 201, `"name":"c"`},
		{"POST", "/api/v1/tokens/bootstrap/rotate", `{"grace_secs":0}`, 400, `--max-ttl of 1h0m0s: the bootstrap token is exempt only as the operator gives it; to replace its secret, restart the daemon with a new --api-token`},
	} {
		code, _, body := d.do(t, c.method, c.path, forever, c.body)
		if code != c.want || !strings.Contains(body, c.msg) {
			t.Errorf("%s %s %s: %d %s, want %d with %q", c.method, c.path, c.body, code, body, c.want, c.msg)
		}
	}
	r := mustRun(t, home, nil, "--server", d.url, "--token", forever, "auth", "token", "ls")
	if !regexp.MustCompile(`(?m)^bootstrap\s+admin\s+\S+\s+never \(bootstrap: exempt from --max-ttl\)`).MatchString(r.stdout) {
		t.Errorf("auth token ls does not say the bootstrap token is exempt:\n%s", r.stdout)
	}
	wantFail(t, runHelyos(t, home, "", nil, "--server", d.url, "--token", forever, "auth", "token", "create", "x"), 1, limit)
	wantFail(t, runHelyos(t, home, "", nil, "daemon", "--max-ttl", "soon"), 2, `invalid value "soon" for flag --max-ttl: want a duration`)
}

// TestCLIScopesBindingsRotation: create --scope/--allow-from, ls and whoami
// show scope, expiry and bindings, a read token is refused with the 403's
// words, rotate prints as create does (secret alone on stdout, no secret
// on stderr), and revoking the last admin says what to do.
func TestCLIScopesBindingsRotation(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	home := d.home
	help := runHelyos(t, home, "", nil, "auth", "token", "create", "--help")
	if !strings.Contains(help.stdout, "Behind a proxy the daemon sees the proxy's address") || !strings.Contains(help.stdout, "X-Forwarded-For is not trusted") {
		t.Errorf("create --help does not warn about proxies:\n%s", help.stdout)
	}
	r := mustRun(t, home, nil, "auth", "token", "create", "reader", "--scope", "read", "--allow-from", "127.0.0.0/8", "--allow-from", "::1/128")
	reader := strings.TrimSpace(r.stdout)
	if !strings.Contains(r.stderr, `token "reader" (scope read, expires never, allowed from 127.0.0.0/8, ::1/128)`) {
		t.Errorf("create said:\n%s", r.stderr)
	}
	ls := mustRun(t, home, nil, "auth", "token", "ls").stdout
	if !regexp.MustCompile(`(?m)^reader\s+read\s+\S+Z\s+never\s+never\s+127\.0\.0\.0/8, ::1/128$`).MatchString(ls) ||
		!regexp.MustCompile(`(?m)^bootstrap\s+admin\s+\S+Z\s+never \(bootstrap: exempt from --max-ttl\)\s+\S+Z\s+any address$`).MatchString(ls) {
		t.Errorf("auth token ls:\n%s", ls)
	}
	who := mustRun(t, home, nil, "--token", reader, "whoami").stdout
	if !regexp.MustCompile(`scope:\s+read\nexpires:\s+never\nlast used:\s+\S+Z\nallowed from:\s+127\.0\.0\.0/8, ::1/128\n`).MatchString(who) {
		t.Errorf("whoami:\n%s", who)
	}
	wantFail(t, runHelyos(t, home, "", nil, "--token", reader, "auth", "token", "create", "x"), 1,
		`create token "x": the daemon answered: token "reader" has scope read; this needs admin (HTTP 403)`)
	wantFail(t, runHelyos(t, home, "", nil, "auth", "token", "create", "x", "--allow-from", "10.0.0.1"), 1, `allow_from (--allow-from) "10.0.0.1" is not a CIDR`)

	r = mustRun(t, home, nil, "auth", "token", "rotate", "reader")
	rotated := strings.TrimSpace(r.stdout)
	if _, ok := parseAPIToken(rotated); !ok || rotated == reader || strings.Contains(r.stderr, rotated) || strings.Contains(r.stderr, reader) {
		t.Fatalf("rotate printed stdout %q, stderr:\n%s", r.stdout, r.stderr)
	}
	for _, want := range []string{`token "reader" (scope read, expires never, allowed from 127.0.0.0/8, ::1/128)`, " --token-stdin\n", "helyos: the old secret stops working now\n"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("rotate did not say %q:\n%s", want, r.stderr)
		}
	}
	wantFail(t, runHelyos(t, home, "", nil, "--token", reader, "whoami"), 1, "was refused")
	if got := whoamiName(t, home, nil, "--token", rotated); got != "reader" {
		t.Errorf("whoami with the rotated secret = %q", got)
	}
	r = mustRun(t, home, nil, "auth", "token", "rotate", "reader", "--grace", "1d")
	if !strings.Contains(r.stderr, "helyos: the old secret stops working in 24h0m0s\n") {
		t.Errorf("rotate --grace said:\n%s", r.stderr)
	}
	mustRun(t, home, nil, "--token", rotated, "whoami") // within its grace
	var answer map[string]any
	decodeOutput(t, mustRun(t, home, nil, "auth", "token", "rotate", "reader", "--json"), &answer)
	if answer["name"] != "reader" || answer["token"] == nil {
		t.Errorf("rotate --json = %v", answer)
	}
	wantFail(t, runHelyos(t, home, "", nil, "auth", "token", "rotate", "reader", "--grace", "soon"), 2, `invalid value "soon" for flag --grace: want a duration`)
	wantFail(t, runHelyos(t, home, "", nil, "auth", "token", "rotate", "nobody"), 1, `rotate token "nobody"`, "HTTP 404")
	wantFail(t, runHelyos(t, home, "", nil, "auth", "token", "revoke", "bootstrap"), 1,
		`revoke token "bootstrap": the daemon answered: token "bootstrap" is the last active admin token`, "restart the daemon with --api-token")
}

// TestCLIExpiryWarning: every command warns once on stderr when its token
// expires, or its rotation's grace period ends, within 7 days, naming the
// token; not for later or no expiry.
func TestCLIExpiryWarning(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	home := d.home
	soon := strings.TrimSpace(mustRun(t, home, nil, "auth", "token", "create", "soon", "--ttl", "259200").stdout)   // 3 days
	later := strings.TrimSpace(mustRun(t, home, nil, "auth", "token", "create", "later", "--ttl", "691200").stdout) // 8 days
	warning := regexp.MustCompile(`helyos: warning: token "soon" expires in 7[12]h\d+m \(\S+Z\); ask an admin to rotate it, or for a new one\n`)
	for _, args := range [][]string{{"whoami"}, {"auth", "token", "ls"}, {"status"}} {
		r := mustRun(t, home, nil, append([]string{"--token", soon}, args...)...)
		if n := len(warning.FindAllString(r.stderr, -1)); n != 1 {
			t.Errorf("%v with a token that expires in 3 days warned %d times:\n%s", args, n, r.stderr)
		}
		for _, token := range []string{later, d.token} {
			if r := mustRun(t, home, nil, append([]string{"--token", token}, args...)...); strings.Contains(r.stderr, "warning") {
				t.Errorf("%v warned for a token that expires later or never:\n%s", args, r.stderr)
			}
		}
	}
	// A secret in its rotation's grace period warns of the grace's end,
	// and whoami shows it expiring then.
	mustRun(t, home, nil, "auth", "token", "rotate", "later", "--grace", "1d")
	r := mustRun(t, home, nil, "--token", later, "whoami")
	if m := regexp.MustCompile(`warning: token "later" expires in 2[34]h\d+m \((\S+)\)`).FindStringSubmatch(r.stderr); m == nil || !regexp.MustCompile(`expires:\s+`+m[1]+"\n").MatchString(r.stdout) {
		t.Errorf("a secret within its grace period did not warn, or whoami shows another expiry:\n%s%s", r.stderr, r.stdout)
	}
	// Once per command, however many requests it makes.
	var stderr strings.Builder
	tgt := &target{server: d.url, token: soon, stderr: &stderr}
	tgt.setClient(nil, false)
	for range 3 {
		if err := tgt.call("GET", "/api/v1/whoami", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(warning.FindAllString(stderr.String(), -1)); n != 1 {
		t.Errorf("three requests warned %d times:\n%s", n, stderr.String())
	}
	// The time left reads as a duration, also under a minute and when this
	// machine's clock runs ahead of the daemon's.
	for left, want := range map[time.Duration]string{20 * time.Second: "in under a minute (", -90 * time.Second: "in under a minute (", 90 * time.Minute: "in 1h30m ("} {
		stderr.Reset()
		exp := time.Now().Add(left).UTC().Format(time.RFC3339)
		(&target{stderr: &stderr}).warnExpiry(http.Header{"Helyos-Token-Name": {"ci"}, "Helyos-Token-Expires": {exp}})
		if !strings.Contains(stderr.String(), `token "ci" expires `+want+exp+")") {
			t.Errorf("%v left: warned %q, want %q", left, stderr.String(), want)
		}
	}
}

// TestDurationFlags: --grace and --max-ttl read Go durations, days and bare
// seconds; anything else, negative or overflowing is refused.
func TestDurationFlags(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"0": 0, "3600": time.Hour, "90s": 90 * time.Second, "15m": 15 * time.Minute, "12h": 12 * time.Hour,
		"1h30m": 90 * time.Minute, "30d": 30 * 24 * time.Hour, "0d": 0,
	} {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "-1", "-1h", "-2d", "1.5d", "1w", "1500ms", "soon", "9223372036854775807d", "99999999999999999999"} {
		if got, err := parseDuration(in); err == nil {
			t.Errorf("parseDuration(%q) = %v, want an error", in, got)
		}
	}
}
