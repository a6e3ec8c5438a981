package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
)

// contextsHome is a HOME whose config holds the contexts prod and staging.
func contextsHome(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	for _, name := range []string{"prod", "staging"} {
		mustRun(t, home, nil, "context", "set", name, "--server", "https://"+name+".test")
	}
	return home
}

// TestCompletions: what `helyos __complete WORDS...` offers for the last word.
func TestCompletions(t *testing.T) {
	t.Setenv("HELYOS_CONFIG", filepath.Join(contextsHome(t), ".helyos", "config.toml"))
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{""}, "audit auth completion context daemon events login logout status version whoami"},
		{[]string{"co"}, "completion context"},
		{[]string{"context", ""}, "current list ls rename rm set use"},
		{[]string{"context", "use", ""}, "prod staging"},
		{[]string{"context", "rm", "s"}, "staging"},
		{[]string{"context", "rename", ""}, "prod staging"},
		{[]string{"context", "rename", "prod", ""}, ""},
		{[]string{"context", "set", "prod", "--token-"}, "--token-command --token-env"},
		{[]string{"logout", ""}, "prod staging"},
		{[]string{"--context", ""}, "prod staging"},
		{[]string{"whoami", "--context", "p"}, "prod"},
		{[]string{"--json", "--server", "https://x.test", "auth", ""}, "token"},
		{[]string{"auth", "token", ""}, "create list ls revoke rotate"},
		{[]string{"auth", "token", "create", "ci", "--t"}, "--token --ttl"},
		{[]string{"whoami", "--"}, "--context --json --server --token"},
		{[]string{"login", "--ca-f"}, "--ca-file --ca-fingerprint"},
		{[]string{"login", "--ca-file", ""}, ""},
		{[]string{"login", "--insecure-skip-tls-verify", "s"}, ""},
		{[]string{"daemon", "--tls-"}, "--tls-cert --tls-key --tls-san"},
		{[]string{"daemon", "--log-format", ""}, ""},
		{[]string{"completion", ""}, "bash fish zsh"},
		{[]string{"audit", ""}, "verify"},
		{[]string{"audit", "verify", "--d"}, "--data-dir"},
		{[]string{"events", "--"}, "--context --follow --json --server --since --token"},
		{[]string{"daemon", "--au"}, "--audit-max-size"},
		{[]string{"whoami", ""}, ""},
		{nil, "audit auth completion context daemon events login logout status version whoami"},
	} {
		if got := strings.Join(completions(tc.words), " "); got != tc.want {
			t.Errorf("complete %q = %q, want %q", tc.words, got, tc.want)
		}
	}
	// The global flags offered are the ones parseGlobals takes, with or
	// without a value as it takes them.
	for name, takesValue := range flagsAt(nil) {
		args := []string{"--" + name, "x", "y"}
		if !takesValue {
			args = []string{"--" + name, "y"}
		}
		if _, rest, err := parseGlobals(args, &stdio{}); err != nil || !slices.Equal(rest, []string{"y"}) {
			t.Errorf("parseGlobals(%q) = %q, %v", args, rest, err)
		}
	}
}

// TestCompletionScripts: each script passes its shell's syntax check, and
// bash and fish, loaded the way the README says, complete a context name
// from the config file by calling the binary.
func TestCompletionScripts(t *testing.T) {
	t.Parallel()
	home := contextsHome(t)
	bin := filepath.Join(t.TempDir(), "helyos")
	if err := os.Symlink(helyosBin, bin); err != nil {
		t.Fatal(err)
	}
	env := testEnv(home)
	env[0] = "PATH=" + filepath.Dir(bin) + ":" + os.Getenv("PATH")
	shell := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(needTool(t, name), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %q: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		t.Run(sh, func(t *testing.T) {
			script := filepath.Join(t.TempDir(), "helyos."+sh)
			os.WriteFile(script, []byte(mustRun(t, home, nil, "completion", sh).stdout), 0o600)
			shell(sh, "-n", script)
		})
	}
	got := shell("bash", "-c", `source <(helyos completion bash) && complete -p helyos &&
		COMP_WORDS=(helyos context use s) COMP_CWORD=3 && _helyos && printf '%s\n' "${COMPREPLY[@]}"`)
	if got != "complete -o default -F _helyos helyos\nstaging\n" {
		t.Errorf("bash completion:\n%s", got)
	}
	if got := shell("fish", "-c", `helyos completion fish | source; complete -C "helyos --context "`); got != "prod\nstaging\n" {
		t.Errorf("fish completion:\n%s", got)
	}
	if r := runHelyos(t, home, "", nil, "completion", "tcsh"); r.code != 2 || !strings.Contains(r.stderr, `helyos: error: completion: no script for "tcsh"; give bash, zsh or fish`) {
		t.Errorf("completion tcsh: %d %s", r.code, r.stderr)
	}
}

// TestCompletionSkipsHostileContextNames: a config edited by hand (or handed
// over) may name a context "p;id" or "p$(…)". bash puts a candidate into the
// command line as it is, so only names the CLI itself accepts are offered.
func TestCompletionSkipsHostileContextNames(t *testing.T) {
	home := t.TempDir()
	path := filepath.Join(home, "config.toml")
	config := `[context.prod]` + "\n" + `server = "https://prod.test:6443"` + "\n"
	for _, name := range []string{`p$(touch pwned)`, "p;id", "p`id`", `p two\nthree`, "p two", "p'q"} {
		config += `[context."` + strings.ReplaceAll(name, `"`, `\"`) + `"]` + "\n" + `server = "https://x.test:6443"` + "\n"
	}
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("HELYOS_CONFIG", path)
	if _, err := loadConfig(path); err != nil {
		t.Fatal(err)
	}
	for _, words := range [][]string{{"context", "use", "p"}, {"--context", "p"}} {
		if got := completions(words); !slices.Equal(got, []string{"prod"}) {
			t.Errorf("complete %q = %q, want only prod", words, got)
		}
	}
}

// TestCompletionRunsNothing: completing after every command, subcommand and
// flag reads the config alone: the context's token command never runs and
// its server is never dialled.
func TestCompletionRunsNothing(t *testing.T) {
	home := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var dialled atomic.Int32
	go func() {
		for conn, err := ln.Accept(); err == nil; conn, err = ln.Accept() {
			dialled.Add(1)
			conn.Close()
		}
	}()
	marker := filepath.Join(home, "token-command-ran")
	mustRun(t, home, nil, "context", "set", "prod", "--server", "http://"+ln.Addr().String(), "--token-command", "touch "+marker)
	mustRun(t, home, nil, "context", "use", "prod")
	t.Setenv("HELYOS_CONFIG", filepath.Join(home, ".helyos", "config.toml"))
	var walk func(path []string)
	walk = func(path []string) {
		for _, last := range []string{"", "-", "--context", "p"} {
			completions(append(slices.Clone(path), last))
			completions(append([]string{"--context", "prod"}, append(slices.Clone(path), last)...))
		}
		for _, sub := range subcommands(path) {
			walk(append(slices.Clone(path), sub))
		}
	}
	walk(nil)
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("completion ran the context's token command")
	}
	if n := dialled.Load(); n > 0 {
		t.Errorf("completion dialled the context's server %d times", n)
	}
}
