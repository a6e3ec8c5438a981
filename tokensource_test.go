package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Black-box tests of credential sources: token-env and token-command keep
// the token out of config.toml; failures name the variable or command and
// the context, never a token.

// TestCredentialLoginRecordsOnlyTheSource: login with --token-env or
// --token-command checks the token and saves the variable's name or the
// command, never the token; later commands read it from there.
func TestCredentialLoginRecordsOnlyTheSource(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	secret := d.createToken(t, d.token, "ci", 0)
	scripts := t.TempDir()
	helper := writeScript(t, scripts, "vault", "echo "+secret+"\necho 'second line is ignored'\n")
	secretFile := filepath.Join(scripts, "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, flag, value string
		env               []string // for login and every later use
		source            string   // context ls TOKEN column
	}{
		{"env", "--token-env", "CI_HELYOS_TOKEN", []string{"CI_HELYOS_TOKEN=" + secret}, "env:CI_HELYOS_TOKEN"},
		{"env padded", "--token-env", "PADDED", []string{"PADDED=  " + secret + "\n"}, "env:PADDED"},
		{"command", "--token-command", helper, nil, "command"},
		{"command pipeline", "--token-command", "cat " + secretFile + " | tr -d ' '", nil, "command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			home := t.TempDir()
			r := mustRun(t, home, tc.env, "login", d.url, "--ca-fingerprint", d.fp, tc.flag, tc.value, "--name", "prod")
			noTokenIn(t, r, secret, d.token)
			data := mustReadFile(t, cliConfigPath(home))
			if strings.Contains(string(data), strings.TrimPrefix(secret, "nxa-api_")) {
				t.Fatalf("config.toml holds the token:\n%s", data)
			}
			c := mustContext(t, home, "prod")
			if c.Token != "" || c.TokenName != "ci" {
				t.Errorf("context token %q, token-name %q; want none and %q", c.Token, c.TokenName, "ci")
			}
			if got := c.TokenEnv + c.TokenCommand; got != tc.value {
				t.Errorf("recorded source %q, want %q", got, tc.value)
			}
			if name := whoamiName(t, home, tc.env); name != "ci" {
				t.Errorf("whoami through the source = %q, want ci", name)
			}
			var views []contextView
			decodeOutput(t, mustRun(t, home, tc.env, "context", "ls", "--json"), &views)
			if len(views) != 1 || views[0].TokenSource != tc.source {
				t.Errorf("context ls --json = %+v, want token source %q", views, tc.source)
			}
		})
	}
}

// TestCredentialSourceFailures: every way a source can fail is an error
// that names the variable or the command and the context, exit 1, with no
// token in it; a login that fails this way saves nothing.
func TestCredentialSourceFailures(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	secret := d.createToken(t, d.token, "ops", 0)
	scripts := t.TempDir()
	pidFile := filepath.Join(scripts, "slow.pid")
	failing := writeScript(t, scripts, "locked", "echo 'vault is locked, run: vault unlock' >&2\nexit 3\n")
	silent := writeScript(t, scripts, "silent", "echo 'no entry for helyos' >&2\n")
	slow := writeScript(t, scripts, "slow", "sleep 3600 &\necho $! > "+pidFile+"\nwait\necho "+secret+"\n")

	// After the subtests: the slow helper's child was killed with its
	// process group, not left behind.
	t.Cleanup(func() {
		data, err := os.ReadFile(pidFile)
		if err != nil {
			t.Errorf("the slow helper never ran: %v", err)
			return
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
		if pid > 0 && processRunning(pid) {
			t.Errorf("the slow helper's child %d still runs after the time limit", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	for _, tc := range []struct {
		name, flag, value string
		env               []string
		wants             []string // all in stderr
	}{
		{"env unset", "--token-env", "HELYOS_UNSET_VAR", nil, []string{"$HELYOS_UNSET_VAR", "unset or empty", "hint: export HELYOS_UNSET_VAR=<token> first\n"}},
		{"env empty", "--token-env", "EMPTY_VAR", []string{"EMPTY_VAR="}, []string{"$EMPTY_VAR", "unset or empty"}},
		{"env blank", "--token-env", "BLANK_VAR", []string{"BLANK_VAR=   "}, []string{"$BLANK_VAR", "unset or empty"}},
		{"command fails", "--token-command", failing, nil, []string{failing, "failed: exit status 3", "vault is locked, run: vault unlock"}},
		{"command prints nothing", "--token-command", silent, nil, []string{silent, "printed no token", "no entry for helyos"}},
		{"command reads stdin", "--token-command", "cat", nil, []string{`"cat"`, "printed no token"}},
		{"command not found", "--token-command", "/nonexistent/helper", nil, []string{"/nonexistent/helper", "failed: exit status 127"}},
		{"command too slow", "--token-command", slow, nil, []string{slow, "did not finish within 10s"}},
		{"command embeds a token", "--token-command", "false " + secret, nil, []string{`"false nxa-api_<redacted>" failed: exit status 1`}},
		{"env with wrong token", "--token-env", "WRONG", []string{"WRONG=nxa-api_" + strings.Repeat("0", 64)}, []string{"missing or invalid bearer token"}},
		{"command prints junk", "--token-command", "echo hunter2", nil, []string{"is not a helyos API token (want nxa-api_ and 64 hex characters)"}},
		{"env holds junk", "--token-env", "JUNK", []string{"JUNK=hunter2"}, []string{"is not a helyos API token (want nxa-api_ and 64 hex characters)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// At login: nothing saved.
			home := t.TempDir()
			r := runHelyos(t, home, "", tc.env, "login", d.url, "--ca-fingerprint", d.fp, tc.flag, tc.value)
			wantFail(t, r, 1, tc.wants...)
			noTokenIn(t, r, secret, d.token)
			if strings.Contains(r.stderr, "(login)") || strings.Contains(r.stderr, "hunter2") {
				t.Errorf("login named a context \"(login)\" or echoed a junk token:\n%s", r.stderr)
			}
			if _, err := os.Stat(cliConfigPath(home)); !os.IsNotExist(err) {
				t.Errorf("a failed login wrote %s", cliConfigPath(home))
			}
			if tc.name == "env with wrong token" {
				return // a bad token is not the source's failure; login covers it
			}
			// At use: a context that reads from the failing source.
			home = t.TempDir()
			mustRun(t, home, nil, "--server", d.url, "context", "set", "prod", tc.flag, tc.value)
			r = runHelyos(t, home, "", tc.env, "whoami")
			wantFail(t, r, 1, append([]string{`context "prod"`}, tc.wants...)...)
			noTokenIn(t, r, secret, d.token)
		})
	}

}

// processRunning reports whether pid is still alive, and not a zombie, after
// a minute's polling for it to die.
func processRunning(pid int) bool {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return false
		}
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// TestCredentialPrecedence: --token > $HELYOS_API_TOKEN > the context's
// source, whichever source the context uses.
func TestCredentialPrecedence(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	flagTok := d.createToken(t, d.token, "from-flag", 0)
	envTok := d.createToken(t, d.token, "from-env", 0)
	ctxTok := d.createToken(t, d.token, "from-context", 0)
	helper := writeScript(t, t.TempDir(), "helper", "echo "+ctxTok+"\n")

	for _, src := range []struct{ flag, value string }{
		{"--token-env", "CTX_TOKEN"},
		{"--token-command", helper},
	} {
		home := t.TempDir()
		base := []string{"CTX_TOKEN=" + ctxTok}
		mustRun(t, home, base, "login", d.url, "--ca-fingerprint", d.fp, src.flag, src.value, "--name", "prod")
		for _, row := range []struct {
			env  []string
			args []string
			want string
		}{
			{nil, nil, "from-context"},
			{[]string{"HELYOS_API_TOKEN=" + envTok}, nil, "from-env"},
			{[]string{"HELYOS_API_TOKEN=" + envTok}, []string{"--token", flagTok}, "from-flag"},
			{nil, []string{"--token", flagTok}, "from-flag"},
		} {
			if got := whoamiName(t, home, append(base, row.env...), row.args...); got != row.want {
				t.Errorf("%s: env %v args %v: whoami = %q, want %q", src.flag, len(row.env), row.args, got, row.want)
			}
		}
		// A token given by flag or environment means a broken source is
		// never consulted.
		r := runHelyos(t, home, "", []string{"HELYOS_API_TOKEN=" + envTok}, "whoami")
		if r.code != 0 {
			t.Errorf("%s: with $HELYOS_API_TOKEN set, a missing source must not matter: %s", src.flag, r.stderr)
		}
	}
}

// TestCredentialContextSet: context set switches a context between sources,
// at most one at a time, and context ls shows where each token comes from.
func TestCredentialContextSet(t *testing.T) {
	t.Parallel()
	d := tlsDaemon(t)
	home := t.TempDir()
	mustRun(t, home, nil, "login", d.url, "--ca-fingerprint", d.fp, "--token", d.token, "--name", "stored")
	mustRun(t, home, nil, "--server", d.url, "context", "set", "envctx", "--token-env", "MY_TOKEN")
	mustRun(t, home, nil, "--server", d.url, "context", "set", "cmdctx", "--token-command", "pass show helyos")
	mustRun(t, home, nil, "--server", d.url, "context", "set", "none")

	r := mustRun(t, home, nil, "context", "ls")
	noTokenIn(t, r, d.token)
	want := map[string]string{"stored": "token", "envctx": "env:MY_TOKEN", "cmdctx": "command", "none": "-"}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
		f := strings.Fields(strings.TrimPrefix(line, "*"))
		if len(f) < 2 || want[f[0]] != f[len(f)-1] {
			t.Errorf("context ls line %q: want TOKEN column %q", line, want[f[0]])
		}
	}
	var views []contextView
	decodeOutput(t, mustRun(t, home, nil, "context", "ls", "--json"), &views)
	for _, v := range views {
		if v.TokenSource != want[v.Name] {
			t.Errorf("context ls --json %s: token_source %q, want %q", v.Name, v.TokenSource, want[v.Name])
		}
	}

	// Switching the stored-token context to an env source drops the token
	// from the file; switching again replaces the env source.
	mustRun(t, home, nil, "context", "set", "stored", "--token-env", "MY_TOKEN")
	if data := mustReadFile(t, cliConfigPath(home)); strings.Contains(string(data), strings.TrimPrefix(d.token, "nxa-api_")) {
		t.Errorf("the token is still in the file after --token-env:\n%s", data)
	}
	mustRun(t, home, nil, "context", "set", "stored", "--token-command", "pass show x")
	if c := mustContext(t, home, "stored"); c.Token != "" || c.TokenEnv != "" || c.TokenCommand != "pass show x" {
		t.Errorf("after --token-command: %+v", c)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"context", "set", "stored", "--token-env", "A", "--token-command", "b"}, "not both"},
		{[]string{"context", "set", "stored", "--token-env", "$MY_TOKEN"}, "not an environment variable name"},
		{[]string{"context", "set", "stored", "--token-env", "A=B"}, "not an environment variable name"},
		{[]string{"context", "set", "stored", "--token-env", "9LIVES"}, "not an environment variable name"},
		{[]string{"context", "set", "stored", "--token-env", d.token}, `"nxa-api_<redacted>" is not an environment variable name`},
		{[]string{"login", d.url, "--ca-fingerprint", d.fp, "--token-env", d.token}, `"nxa-api_<redacted>" is not an environment variable name`},
		{[]string{"context", "set", "stored", "--token", d.token}, "--token cannot be saved without a check"},
		{[]string{"login", d.url, "--ca-fingerprint", d.fp, "--token-env", "A", "--token-command", "b"}, "one way only"},
		{[]string{"login", d.url, "--ca-fingerprint", d.fp, "--token-env", "A", "--token", d.token}, "one way only"},
		{[]string{"login", d.url, "--ca-fingerprint", d.fp, "--token-env", "$A"}, "not an environment variable name"},
	} {
		before := mustReadFile(t, cliConfigPath(home))
		r := runHelyos(t, home, "", nil, tc.args...)
		wantFail(t, r, 2, tc.want)
		noTokenIn(t, r, d.token)
		if after := mustReadFile(t, cliConfigPath(home)); !bytes.Equal(after, before) {
			t.Errorf("%v changed the config", tc.args)
		}
	}
}

// TestCredentialHandEditedTwoSources: a hand-edited context with two token
// sources is refused at use, naming the context, rather than one silently
// winning.
func TestCredentialHandEditedTwoSources(t *testing.T) {
	t.Parallel()
	home := t.TempDir()
	cfg := "current-context = \"prod\"\n\n[context.prod]\nserver = \"https://127.0.0.1:1\"\ntoken = \"nxa-api_" + strings.Repeat("ab", 32) + "\"\ntoken-env = \"PROD_TOKEN\"\n"
	os.MkdirAll(filepath.Dir(cliConfigPath(home)), 0o700)
	if err := os.WriteFile(cliConfigPath(home), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runHelyos(t, home, "", []string{"PROD_TOKEN=x"}, "whoami")
	wantFail(t, r, 1, `context "prod" sets more than one of token, token-env and token-command`, "helyos context set prod --token-env")
	noTokenIn(t, r, "nxa-api_"+strings.Repeat("ab", 32))
	// The advertised fix works.
	mustRun(t, home, nil, "context", "set", "prod", "--token-env", "PROD_TOKEN")
	if c := mustContext(t, home, "prod"); c.Token != "" || c.TokenEnv != "PROD_TOKEN" {
		t.Errorf("after the fix: %+v", c)
	}
}

// TestCredentialLooseConfigMode: context ls and whoami warn when the file is
// readable by others; the next save restores 0600.
func TestCredentialLooseConfigMode(t *testing.T) {
	t.Parallel()
	d := httpDaemon(t)
	home := d.home // the daemon's first start wrote the local context here
	path := cliConfigPath(home)
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"context", "ls"}, {"whoami"}} {
			r := mustRun(t, home, nil, args...)
			if !strings.Contains(r.stderr, "readable by others") || !strings.Contains(r.stderr, "chmod 600 "+path) {
				t.Errorf("mode %04o: %v gave no warning: %q", mode, args, r.stderr)
			}
			noTokenIn(t, r, d.token)
		}
		mustRun(t, home, nil, "context", "use", "local")
		if got := permOf(t, path); got != 0o600 {
			t.Errorf("after a save from mode %04o the file is %04o, want 0600", mode, got)
		}
		if r := mustRun(t, home, nil, "context", "ls"); strings.Contains(r.stderr, "warning") {
			t.Errorf("warning at 0600: %s", r.stderr)
		}
	}
	// --json output stays clean JSON; the warning goes to stderr.
	os.Chmod(path, 0o644)
	r := mustRun(t, home, nil, "context", "ls", "--json")
	var views []contextView
	if err := json.Unmarshal([]byte(r.stdout), &views); err != nil || !strings.Contains(r.stderr, "readable by others") {
		t.Errorf("--json with a loose file: stdout %q stderr %q", r.stdout, r.stderr)
	}
}
