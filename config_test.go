package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// hostileConfig holds every kind of value the writer must escape.
func hostileConfig() *Config {
	return &Config{
		CurrentContext: "my prod",
		Contexts: []*Context{
			{Name: "local", Server: "http://localhost:6443", Token: "nxa-api_local", Project: "default"},
			{
				Name:         "my prod",
				Server:       `https://"quoted"\back\slash:6443`,
				Token:        "# not a comment = still the token",
				TokenName:    "line1\nline2\r\nline3",
				TokenEnv:     "tab\there",
				TokenCommand: "nul\x00 del\x7f ctl\x01\x1f\b\f esc\x1b",
				Project:      "héllo ✓ 日本 𝄞",
				Insecure:     true,
				CA:           "'single' ]] [context.x] \\u0041",
				CASHA256:     `trailing\`,
			},
			{Name: "a.b.c"},
			{Name: "quote\"name\nnew\tline \x7f"},
			{Name: "héllo"},
			{Name: "-_Az09", Project: " spaces "},
			{Name: "#"},
		},
	}
}

// cfgEqual compares two configs field by field (Context is comparable).
func cfgEqual(a, b *Config) bool {
	if a.CurrentContext != b.CurrentContext || len(a.Contexts) != len(b.Contexts) {
		return false
	}
	for i := range a.Contexts {
		if *a.Contexts[i] != *b.Contexts[i] {
			return false
		}
	}
	return true
}

func cfgString(c *Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "current-context=%q\n", c.CurrentContext)
	for _, ctx := range c.Contexts {
		j, _ := json.Marshal(ctx)
		fmt.Fprintf(&b, "%s\n", j)
	}
	return b.String()
}

func TestConfigRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		cfg  *Config
	}{
		{"empty", &Config{}},
		{"current only", &Config{CurrentContext: "nowhere"}},
		{"empty context", &Config{Contexts: []*Context{{Name: "bare"}}}},
		{"hostile values", hostileConfig()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := tt.cfg.marshal()
			got, err := parseConfig(data)
			if err != nil {
				t.Fatalf("parse of our own output: %v\n%s", err, data)
			}
			if !cfgEqual(got, tt.cfg) {
				t.Fatalf("round trip changed the config\nwant:\n%s\ngot:\n%s\nfile:\n%s", cfgString(tt.cfg), cfgString(got), data)
			}
			if again := got.marshal(); !bytes.Equal(again, data) {
				t.Fatalf("second marshal differs:\n%s\nvs\n%s", data, again)
			}
		})
	}
}

func TestConfigMarshalFormat(t *testing.T) {
	cfg := &Config{
		CurrentContext: "prod",
		Contexts: []*Context{
			{Name: "local", Server: "http://localhost:6443", Token: "nxa-api_local", Project: "default"},
			{Name: "my prod", Server: "https://x:6443", TokenName: "alice", Insecure: true, CA: "QUJD", CASHA256: "9f:86"},
		},
	}
	want := "# Managed by `helyos`. Edit with `helyos context` / `helyos login`.\n" +
		"current-context = \"prod\"\n" +
		"\n[context.local]\nserver = \"http://localhost:6443\"\ntoken = \"nxa-api_local\"\nproject = \"default\"\n" +
		"\n[context.\"my prod\"]\nserver = \"https://x:6443\"\ntoken-name = \"alice\"\ninsecure = true\nca = \"QUJD\"\nca-sha256 = \"9f:86\"\n"
	if got := string(cfg.marshal()); got != want {
		t.Fatalf("marshal:\n%s\nwant:\n%s", got, want)
	}
	if got := tomlQuote("a\x00\x7f\t\"\\é"); got != `"a\u0000\u007F\t\"\\é"` {
		t.Fatalf("tomlQuote = %s", got)
	}
}

// handEditedConfig is what a person might write: comments everywhere, both
// quote styles, quoted and spaced table names, escapes.
const handEditedConfig = `# my clusters
   # an indented comment

current-context = 'prod'   # a literal string

[context.local]
server="http://localhost:6443"
  token = "nxa-api_local"	# tab before this comment
project = "default"

[ context . "my prod" ]   # spaces in the header
server = 'C:\path\no-escapes'
token-name = "al\u00e9ce \U0001F600 \"q\" \\ \b\t\n\f\r"
insecure = true
"ca-sha256" = "9f:86 # not a comment"

[context.'prod']
server = "https://cluster.example.com:6443"
insecure = false
token-env = "PROD_TOKEN"
token-command = "op read 'op://vault/helyos/token'"
`

func handEditedWant() *Config {
	return &Config{
		CurrentContext: "prod",
		Contexts: []*Context{
			{Name: "local", Server: "http://localhost:6443", Token: "nxa-api_local", Project: "default"},
			{Name: "my prod", Server: `C:\path\no-escapes`, TokenName: "al\u00e9ce \U0001F600 \"q\" \\ \b\t\n\f\r", Insecure: true, CASHA256: "9f:86 # not a comment"},
			{Name: "prod", Server: "https://cluster.example.com:6443", TokenEnv: "PROD_TOKEN", TokenCommand: "op read 'op://vault/helyos/token'"},
		},
	}
}

func TestConfigParseHandEdited(t *testing.T) {
	inputs := map[string]string{
		"LF":           handEditedConfig,
		"CRLF":         strings.ReplaceAll(handEditedConfig, "\n", "\r\n"),
		"no final EOL": strings.TrimSuffix(handEditedConfig, "\n"),
	}
	for name, input := range inputs {
		t.Run(name, func(t *testing.T) {
			got, err := parseConfig([]byte(input))
			if err != nil {
				t.Fatal(err)
			}
			if want := handEditedWant(); !cfgEqual(got, want) {
				t.Fatalf("want:\n%s\ngot:\n%s", cfgString(want), cfgString(got))
			}
		})
	}
}

func TestConfigParseErrors(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"unknown key", "[context.a]\nserver = \"x\"\nsever = \"y\"", `line 3: unknown key sever in [context.a]`},
		{"unknown key quoted table", "[context.\"a b\"]\nfoo = true", `line 2: unknown key foo in [context."a b"]`},
		{"dotted key", "[context.a]\nserver.x = \"y\"", `line 2: unknown key server.x in [context.a]`},
		{"unknown table", "\n[server]", `line 2: unknown table [server]; only [context.NAME] tables are allowed`},
		{"nested table", "[context.a.b]", `line 1: unknown table [context.a.b]; only [context.NAME] tables are allowed`},
		{"context without name", "[context]", `line 1: table [context] needs a name: [context.NAME]`},
		{"empty context name", `[context.""]`, `line 1: empty context name`},
		{"array of tables", "[[context.a]]", `line 1: arrays of tables ([[...]]) are not supported`},
		{"unclosed header", "[context.a", `line 1: expected ] to close the table header, found end of line`},
		{"text after header", "[context.a] x", `line 1: unexpected 'x' after the table header`},
		{"duplicate key", "[context.a]\nserver = \"x\"\n'server' = \"y\"", `line 3: duplicate key server in [context.a]`},
		{"duplicate current", "current-context = \"a\"\ncurrent-context = \"b\"", `line 2: duplicate key current-context`},
		{"duplicate table", "[context.a]\n[context.b]\n[ context . \"a\" ]", `line 3: duplicate table [context.a]`},
		{"bool for string", "[context.a]\nserver = true", `line 2: server must be a string (in quotes) in [context.a]`},
		{"string for bool", "[context.a]\ninsecure = \"true\"", `line 2: insecure must be true or false in [context.a]`},
		{"bool current", "current-context = false", `line 1: current-context must be a string (in quotes)`},
		{"key before table", "server = \"x\"\n[context.a]", `line 1: unknown key server before the first [context.NAME] table`},
		{"current after table", "[context.a]\ncurrent-context = \"a\"", `line 2: current-context must come before the first [context.NAME] table`},
		{"unterminated basic", "[context.a]\nserver = \"http://x", `line 2: unterminated string (a string must end on the same line)`},
		{"unterminated literal", "[context.a]\nserver = 'http://x", `line 2: unterminated string (a string must end on the same line)`},
		{"backslash at end", "[context.a]\nserver = \"x\\", `line 2: unterminated string (a string must end on the same line)`},
		{"multi-line basic", "[context.a]\nserver = \"\"\"x\"\"\"", `line 2: multi-line strings are not supported`},
		{"multi-line literal", "[context.a]\nserver = '''x'''", `line 2: multi-line strings are not supported`},
		{"array", "[context.a]\nserver = [\"x\"]", `line 2: arrays are not supported`},
		{"inline table", "[context.a]\nserver = {x = 1}", `line 2: inline tables are not supported`},
		{"number", "[context.a]\nproject = 42", `line 2: invalid value: strings need quotes ("..." or '...'), booleans are true or false`},
		{"unquoted token is not echoed", "[context.a]\ntoken = nxa-api_secret", `line 2: invalid value: strings need quotes ("..." or '...'), booleans are true or false`},
		{"True is not a bool", "[context.a]\ninsecure = True", `line 2: invalid value: strings need quotes ("..." or '...'), booleans are true or false`},
		{"missing value", "[context.a]\nserver =   # nothing", `line 2: missing value after =`},
		{"missing equals", "[context.a]\nserver \"x\"", `line 2: expected = after key server, found '"'`},
		{"text after value", "[context.a]\nserver = \"a\" \"b\"", `line 2: unexpected '"' after the value`},
		{"no key", "[context.a]\n= \"x\"", `line 2: expected a key, found '='`},
		{"control in basic", "[context.a]\nserver = \"a\x01b\"", `line 2: control character U+0001 in a string (write it as an escape such as \n)`},
		{"DEL in basic", "[context.a]\nserver = \"a\x7fb\"", `line 2: control character U+007F in a string (write it as an escape such as \n)`},
		{"NUL in literal", "[context.a]\nserver = 'a\x00b'", `line 2: control character U+0000 in a string`},
		{"control in comment", "# a\x02b", `line 1: control character U+0002 in a comment`},
		{"NUL line", "\x00", `line 1: unexpected '\x00'`},
		{"lone CR", "[context.a]\rserver = \"x\"", `line 1: unexpected '\r' after the table header`},
		{"CR in value line", "[context.a]\nserver = \"x\"\r", `line 2: unexpected '\r' after the value`},
		{"invalid UTF-8", "[context.a]\n# ok\nserver = \"\xff\"", `line 3: invalid UTF-8`},
		{"invalid escape", "[context.a]\nserver = \"a\\xb\"", `line 2: invalid escape: backslash followed by 'x' in a string`},
		{"escape 1.1 \\e", "[context.a]\nserver = \"\\e\"", `line 2: invalid escape: backslash followed by 'e' in a string`},
		{"short \\u", "[context.a]\nserver = \"\\u12\"", `line 2: \u escape needs 4 hex digits`},
		{"bad hex \\U", "[context.a]\nserver = \"\\U0001F60G\"", `line 2: \U escape needs 8 hex digits`},
		{"surrogate", "[context.a]\nserver = \"\\uD800\"", `line 2: escape \uD800 is not a Unicode scalar value`},
		{"too large", "[context.a]\nserver = \"\\UFFFFFFFF\"", `line 2: escape \UFFFFFFFF is not a Unicode scalar value`},
		{"CRLF line count", "\r\n# c\r\n\r\n[context.a]\r\nbad\r\n", `line 5: expected = after key bad, found end of line`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseConfig([]byte(tt.input))
			if err == nil {
				t.Fatalf("parsed without error: %s", cfgString(cfg))
			}
			if err.Error() != tt.want {
				t.Fatalf("error:\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

// tomllibLoad reads path with Python's tomllib, the reference parser for
// "any TOML 1.0 parser reads the same data".
func tomllibLoad(t *testing.T, path string) *Config {
	t.Helper()
	const script = `import json, sys, tomllib
with open(sys.argv[1], "rb") as f:
    d = tomllib.load(f)
d["context"] = [dict(name=k, **v) for k, v in d.get("context", {}).items()]
json.dump(d, sys.stdout)
`
	out, err := exec.Command("python3", "-c", script, path).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("tomllib cannot read %s: %v\n%s", path, err, stderr)
	}
	var doc struct {
		CurrentContext string `json:"current-context"`
		Context        []struct {
			Name         string `json:"name"`
			Server       string `json:"server"`
			Token        string `json:"token"`
			TokenName    string `json:"token-name"`
			TokenEnv     string `json:"token-env"`
			TokenCommand string `json:"token-command"`
			Project      string `json:"project"`
			Insecure     bool   `json:"insecure"`
			CA           string `json:"ca"`
			CASHA256     string `json:"ca-sha256"`
		} `json:"context"`
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("tomllib output %s: %v", out, err)
	}
	cfg := &Config{CurrentContext: doc.CurrentContext}
	for _, c := range doc.Context {
		ctx := Context(c)
		cfg.Contexts = append(cfg.Contexts, &ctx)
	}
	return cfg
}

// needTomllib skips the test, or fails it under CI, without Python 3.11+.
func needTomllib(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(needTool(t, "python3"), "-c", "import tomllib").CombinedOutput(); err != nil {
		skipOrFailInCI(t, "python3 has no tomllib (3.11 or newer needed): %v %s", err, out)
	}
}

func TestConfigTomllib(t *testing.T) {
	needTomllib(t)
	files := map[string][]byte{
		"empty":          (&Config{}).marshal(),
		"hostile":        hostileConfig().marshal(),
		"seed example":   handEditedWant().marshal(),
		"hand-edited":    []byte(handEditedConfig),
		"hand-edited-cr": []byte(strings.ReplaceAll(handEditedConfig, "\n", "\r\n")),
	}
	dir := t.TempDir()
	for name, data := range files {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name+".toml")
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			ours, err := loadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			theirs := tomllibLoad(t, path)
			if !cfgEqual(ours, theirs) {
				t.Fatalf("tomllib disagrees\nours:\n%s\ntomllib:\n%s", cfgString(ours), cfgString(theirs))
			}
		})
	}
}

func addContext(name string) func(*Config) error {
	return func(c *Config) error {
		c.Contexts = append(c.Contexts, &Context{Name: name, Server: "https://" + name + ":6443"})
		return nil
	}
}

func TestUpdateConfigFilesAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "home", ".helyos")
	path := filepath.Join(dir, "config.toml")

	if err := updateConfig(path, addContext("one")); err != nil {
		t.Fatal(err)
	}
	if m := permOf(t, dir); m != 0o700 {
		t.Errorf("folder mode %o, want 700", m)
	}
	if m := permOf(t, path); m != 0o600 {
		t.Errorf("file mode %o, want 600", m)
	}
	if _, err := os.Stat(path + ".bak"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("first save made a backup: %v", err)
	}
	first := string(mustReadFile(t, path))

	if err := updateConfig(path, addContext("two")); err != nil {
		t.Fatal(err)
	}
	if got := string(mustReadFile(t, path+".bak")); got != first {
		t.Errorf("backup holds\n%s\nwant the previous file\n%s", got, first)
	}
	if m := permOf(t, path+".bak"); m != 0o600 {
		t.Errorf("backup mode %o, want 600", m)
	}

	for _, p := range []string{path, path + ".bak"} {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := updateConfig(path, addContext("three")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".bak"} {
		if m := permOf(t, p); m != 0o600 {
			t.Errorf("%s mode %o after a save, want 600", filepath.Base(p), m)
		}
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Names(); !slices.Equal(got, []string{"one", "two", "three"}) {
		t.Errorf("names %q", got)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"config.toml", "config.toml.bak", "config.toml.lock"}; !slices.Equal(names, want) {
		t.Errorf("folder holds %q, want %q", names, want)
	}
	if m := permOf(t, path+".lock"); m != 0o600 {
		t.Errorf("lock file mode %o, want 600", m)
	}
}

func TestUpdateConfigWritesNothingOnError(t *testing.T) {
	errStop := errors.New("stop")
	tests := []struct {
		name     string
		existing string // "" means no file
		fn       func(*Config) error
		wantIs   error
		wantText string
	}{
		{"fn fails, no file", "", func(c *Config) error { c.CurrentContext = "x"; return errStop }, errStop, "stop"},
		{"fn fails, file kept", handEditedConfig, func(c *Config) error { c.Contexts = nil; return errStop }, errStop, "stop"},
		{"broken file is never overwritten", "[context.a]\nsever = \"x\"\n", addContext("b"), nil, "line 2: unknown key sever in [context.a]"},
		{"duplicate names refused", handEditedConfig, addContext("local"), nil, `two contexts are named "local"`},
		{"empty name refused", "", addContext(""), nil, "a context has an empty name"},
		{"invalid UTF-8 refused", "", addContext("bad\xff"), nil, "is not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.toml")
			if tt.existing != "" {
				if err := os.WriteFile(path, []byte(tt.existing), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			err := updateConfig(path, tt.fn)
			if err == nil {
				t.Fatal("updateConfig succeeded")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not say %q", err, tt.wantText)
			}
			if tt.existing == "" {
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("config was written: %v", err)
				}
			} else if got := string(mustReadFile(t, path)); got != tt.existing {
				t.Errorf("config changed to\n%s", got)
			}
			if _, err := os.Stat(path + ".bak"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("backup was written: %v", err)
			}
		})
	}
}

func TestUpdateConfigBrokenFileNamesPathWithHint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte("[context.a]\nserver = 42\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := updateConfig(path, addContext("b"))
	want := "config " + path + ": line 2: invalid value"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %v, want prefix %q", err, want)
	}
	var h *hintError
	if !errors.As(err, &h) || !strings.Contains(h.hint, path+".bak") {
		t.Fatalf("no hint naming the backup: %#v", err)
	}
}

// TestUpdateConfigConcurrent: flock belongs to an open file description, so
// goroutines with their own opens exclude each other like processes do.
func TestUpdateConfigConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() { errs <- updateConfig(path, addContext(fmt.Sprintf("c%d", i))) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Contexts) != n {
		t.Fatalf("%d contexts after %d concurrent saves: %q", len(cfg.Contexts), n, cfg.Names())
	}
	for i := range n {
		if cfg.Context(fmt.Sprintf("c%d", i)) == nil {
			t.Errorf("context c%d lost", i)
		}
	}
}

func TestUpdateConfigThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "dotfiles", "helyos.toml")
	if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, (&Config{}).marshal(), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "config.toml")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := updateConfig(link, addContext("a")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the symlink was replaced: %v", err)
	}
	if cfg, err := loadConfig(target); err != nil || cfg.Context("a") == nil {
		t.Fatalf("target not updated: %v", err)
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg, err := loadConfig(filepath.Join(dir, "missing.toml"))
	if err != nil || cfg == nil || len(cfg.Contexts) != 0 || cfg.CurrentContext != "" {
		t.Fatalf("missing file: %v, %v", cfg, err)
	}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte("\n\n[nope]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = loadConfig(path)
	want := "config " + path + ": line 3: unknown table [nope]; only [context.NAME] tables are allowed"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v, want %s", err, want)
	}
	if _, err := loadConfig(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("reading a folder: %v", err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(path, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if got := string(mustReadFile(t, path)); got != "new" {
		t.Errorf("content %q", got)
	}
	if m := permOf(t, path); m != 0o600 {
		t.Errorf("mode %o, want 600", m)
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{"state.json"}) {
		t.Errorf("folder holds %q after success", got)
	}
}

func TestWriteFileAtomicFailure(t *testing.T) {
	dir := t.TempDir()
	// A non-empty folder in the way makes the rename fail after the
	// temporary file was written.
	target := filepath.Join(dir, "state.json")
	if err := os.MkdirAll(filepath.Join(target, "inside"), 0o700); err != nil {
		t.Fatal(err)
	}
	err := writeFileAtomic(target, []byte("data"))
	if err == nil || !strings.Contains(err.Error(), target) {
		t.Fatalf("error %v, want one naming %s", err, target)
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{"state.json"}) {
		t.Errorf("folder holds %q after a failed write", got)
	}
	if got := dirNames(t, target); !slices.Equal(got, []string{"inside"}) {
		t.Errorf("the old entry changed: %q", got)
	}
	if err := writeFileAtomic(filepath.Join(dir, "no", "such", "file"), nil); err == nil {
		t.Fatal("writing into a missing folder succeeded")
	}
}

// testCAPEM makes a throwaway self-signed CA certificate.
func testCAPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "helyos test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestDecodeCA(t *testing.T) {
	caPEM := testCAPEM(t)
	b64 := base64.StdEncoding.EncodeToString
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("k")})
	badDER := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not der")})
	tests := []struct {
		name, ca, wantErr string
	}{
		{"not base64", "!!!not base64", `context "my prod": pinned CA is not valid base64`},
		{"url encoding", strings.NewReplacer("+", "-", "/", "_").Replace(b64(caPEM)) + "-_", `context "my prod": pinned CA is not valid base64`},
		{"not PEM", b64([]byte("hello")), `context "my prod": pinned CA is not a PEM certificate`},
		{"private key", b64(keyPEM), `context "my prod": pinned CA is not a PEM certificate`},
		{"bad DER", b64(badDER), `context "my prod": pinned CA cannot be parsed`},
		{"trailing data", b64(append(slices.Clone(caPEM), "junk"...)), `context "my prod": pinned CA has data after the certificate`},
		{"two certificates", b64(append(slices.Clone(caPEM), caPEM...)), `context "my prod": pinned CA has data after the certificate`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := &Context{Name: "my prod", Server: "https://x:6443", CA: tt.ca}
			got, err := ctx.decodeCA()
			if err == nil {
				t.Fatalf("accepted, returned %d bytes", len(got))
			}
			if !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("error %q, want prefix %q", err, tt.wantErr)
			}
			var h *hintError
			if !errors.As(err, &h) {
				t.Errorf("no hint on %v", err)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		got, err := (&Context{Name: "p", CA: encodeCA(caPEM)}).decodeCA()
		if err != nil || !bytes.Equal(got, caPEM) {
			t.Fatalf("decodeCA = %q, %v", got, err)
		}
	})
	t.Run("no pin", func(t *testing.T) {
		got, err := (&Context{Name: "p"}).decodeCA()
		if err != nil || got != nil {
			t.Fatalf("decodeCA = %q, %v", got, err)
		}
	})
}

func TestConfigPath(t *testing.T) {
	home := t.TempDir()
	tests := []struct {
		name, env, home, want string
	}{
		{"HELYOS_CONFIG wins", "/etc/helyos/other.toml", home, "/etc/helyos/other.toml"},
		{"HOME", "", home, filepath.Join(home, ".helyos", "config.toml")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("HELYOS_CONFIG", tt.env)
			t.Setenv("HOME", tt.home)
			got, err := configPath()
			if err != nil || got != tt.want {
				t.Fatalf("configPath() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	t.Run("neither", func(t *testing.T) {
		t.Setenv("HELYOS_CONFIG", "")
		t.Setenv("HOME", "")
		_, err := configPath()
		var h *hintError
		if err == nil || !errors.As(err, &h) || !strings.Contains(h.hint, "HELYOS_CONFIG") {
			t.Fatalf("configPath() error %v, want a hint naming HELYOS_CONFIG", err)
		}
	})
}

func TestConfigHelpers(t *testing.T) {
	cfg := handEditedWant()
	if got := cfg.Names(); !slices.Equal(got, []string{"local", "my prod", "prod"}) {
		t.Fatalf("Names() = %q", got)
	}
	if cfg.Context("my prod") == nil || cfg.Context("nope") != nil {
		t.Fatal("Context lookup")
	}
	if !cfg.Remove("my prod") || cfg.Remove("my prod") {
		t.Fatal("Remove should succeed once")
	}
	if got := cfg.Names(); !slices.Equal(got, []string{"local", "prod"}) {
		t.Fatalf("after Remove: %q", got)
	}
	if cfg.CurrentContext != "prod" {
		t.Fatal("Remove touched current-context")
	}
	if withHint(nil, "x") != nil {
		t.Fatal("withHint(nil) is not nil")
	}
}

// FuzzParseConfig: no input panics, and whatever parses survives a
// marshal and parse unchanged.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(handEditedConfig))
	f.Add(hostileConfig().marshal())
	f.Add([]byte("[context.a]\nserver = \"\\uD800\\U0010FFFF\\\"\"\r\n"))
	f.Add([]byte("current-context = 'x' # c\n[ context . 'a.b' ]\ninsecure = true"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := parseConfig(data)
		if err != nil {
			return
		}
		out := cfg.marshal()
		again, err := parseConfig(out)
		if err != nil {
			t.Fatalf("our output does not parse: %v\n%s", err, out)
		}
		if !cfgEqual(cfg, again) {
			t.Fatalf("round trip changed\n%s\n%s", cfgString(cfg), cfgString(again))
		}
	})
}
