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
		t.Run(tt.name, func(t *testing.T) { checkRoundTrip(t, tt.cfg) })
	}
}

// checkRoundTrip: what marshal writes parses back as cfg, and writes again
// byte for byte the same.
func checkRoundTrip(t testing.TB, cfg *Config) {
	t.Helper()
	data := cfg.marshal()
	got, err := parseConfig(data)
	if err != nil {
		t.Fatalf("parse of our own output: %v\n%s", err, data)
	}
	if !cfgEqual(got, cfg) {
		t.Fatalf("round trip changed the config\nwant:\n%s\ngot:\n%s\nfile:\n%s", cfgString(cfg), cfgString(got), data)
	}
	if again := got.marshal(); !bytes.Equal(again, data) {
		t.Fatalf("second marshal differs:\n%s\nvs\n%s", data, again)
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
// quote styles, quoted table names, the escapes the writer emits.
const handEditedConfig = `# my clusters
   # an indented comment

current-context = 'prod'   # a literal string

[context.local]
server="http://localhost:6443"
  token = "nxa-api_local"	# tab before this comment
project = "default"

[context."my prod"]   # a quoted name
server = 'C:\path\no-escapes'
token-name = "alé ✓ 𝄞 \"q\" \\ \b\t\n\f\r \u0001\u007F"
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
			{Name: "my prod", Server: `C:\path\no-escapes`, TokenName: "alé ✓ 𝄞 \"q\" \\ \b\t\n\f\r \x01\x7f", Insecure: true, CASHA256: "9f:86 # not a comment"},
			{Name: "prod", Server: "https://cluster.example.com:6443", TokenEnv: "PROD_TOKEN", TokenCommand: "op read 'op://vault/helyos/token'"},
		},
	}
}

// configForm is a file the reader accepts and what it must read.
type configForm struct {
	name, input string
	want        *Config
}

// configForms has a row for every form the reader accepts;
// TestConfigTomllib checks that tomllib reads each of them the same.
func configForms() []configForm {
	a := func(c Context) *Config { c.Name = "a"; return &Config{Contexts: []*Context{&c}} }
	return []configForm{
		{"empty file", "", &Config{}},
		{"blank lines and comments", "\n# c\n   # indented\n\t\n#", &Config{}},
		{"hand-edited", handEditedConfig, handEditedWant()},
		{"hand-edited CRLF", strings.ReplaceAll(handEditedConfig, "\n", "\r\n"), handEditedWant()},
		{"no final line end", strings.TrimSuffix(handEditedConfig, "\n"), handEditedWant()},
		{"current-context", `current-context = "x" # c`, &Config{CurrentContext: "x"}},
		{"comment after a header", "[context.a]# c", a(Context{})},
		{"comment right after a value", "[context.a]\ninsecure = true#c\nproject = 'p'#c", a(Context{Insecure: true, Project: "p"})},
		{"no spaces around =", "[context.a]\nserver=\"x\"", a(Context{Server: "x"})},
		{"indentation", "  [context.a]\n\t server = \"x\"", a(Context{Server: "x"})},
		{"basic string", "[context.a]\nserver = \"https://h:6443\"", a(Context{Server: "https://h:6443"})},
		{"literal string", "[context.a]\nserver = 'C:\\n\\\"x\"'", a(Context{Server: `C:\n\"x"`})},
		{"empty strings", "[context.a]\nserver = \"\"\nproject = ''", a(Context{})},
		{"# inside strings", "[context.a]\nserver = \"a # b\"\nproject = 'c # d'", a(Context{Server: "a # b", Project: "c # d"})},
		{"tab and non-ASCII as they are", "[context.a]\nproject = \"\tà ✓ 𝄞\"", a(Context{Project: "\tà ✓ 𝄞"})},
		{"every escape the writer emits", `[context.a]` + "\n" + `project = "\" \\ \b \t \n \f \r \u0000 \u001F \u007f"`, a(Context{Project: "\" \\ \b \t \n \f \r \x00 \x1f \x7f"})},
		{"booleans", "[context.a]\ninsecure = false\n[context.b]\ninsecure = true", &Config{Contexts: []*Context{{Name: "a"}, {Name: "b", Insecure: true}}}},
		{"bare name with - and _", "[context.my-prod_1]", &Config{Contexts: []*Context{{Name: "my-prod_1"}}}},
		{"quoted names", `[context."my prod"]` + "\n" + `[context.'a.b']` + "\n" + `[context."q\"\u0001"]`, &Config{Contexts: []*Context{{Name: "my prod"}, {Name: "a.b"}, {Name: "q\"\x01"}}}},
		{"quoted keys", "current-context = 'c'\n[context.a]\n\"server\" = \"x\"\n'token' = 'y'", &Config{CurrentContext: "c", Contexts: []*Context{{Name: "a", Server: "x", Token: "y"}}}},
	}
}

func TestConfigParseAccepts(t *testing.T) {
	for _, tt := range configForms() {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseConfig([]byte(tt.input))
			if err != nil {
				t.Fatal(err)
			}
			if !cfgEqual(got, tt.want) {
				t.Fatalf("want:\n%s\ngot:\n%s", cfgString(tt.want), cfgString(got))
			}
		})
	}
}

// TestConfigParseRefuses: every form the reader refuses, with the message
// that names it. No message repeats a value: it may be a token.
func TestConfigParseRefuses(t *testing.T) {
	const (
		invalidValue = `invalid value: strings need quotes ("..." or '...'), booleans are true or false; numbers, dates, arrays and inline tables are not supported here`
		dotted       = `dotted keys are not supported here: a name that holds a dot goes in quotes, "a.b"`
		onlyContext  = `only [context.NAME] table headers are supported here, with no spaces inside the brackets`
		unterminated = `unterminated string (a string must end on the same line)`
		multiLine    = `multi-line strings are not supported here: write one line, with \n for a line break`
		backslash    = `; a backslash itself is \\ (or use 'single quotes', which take \ as it is)`
		badEscape    = `invalid escape: use \" \\ \b \t \n \f \r or \uXXXX` + backslash
		uEscape      = `\u needs 4 hex digits naming a control character other than tab: write any other character as it is` + backslash
		notClosed    = `expected ] right after the context name (a name with a space goes in quotes: [context."my prod"])`
		ctxKeys      = ` (known keys: server, token, token-name, token-env, token-command, project, insecure, ca, ca-sha256)`
	)
	tests := []struct {
		name, input, want string
	}{
		{"unknown key", "[context.a]\nserver = \"x\"\nsever = \"y\"", `line 3: unknown key sever in [context.a]` + ctxKeys},
		{"unknown key quoted table", "[context.\"a b\"]\nfoo = true", `line 2: unknown key foo in [context."a b"]` + ctxKeys},
		{"key before table", "server = \"x\"\n[context.a]", `line 1: unknown key server before the first [context.NAME] table (known keys: current-context)`},
		{"current after table", "[context.a]\ncurrent-context = \"a\"", `line 2: current-context must come before the first [context.NAME] table`},
		{"dotted key", "[context.a]\nserver.x = \"y\"", `line 2: ` + dotted},
		{"dotted key with spaces", "context . a . server = \"y\"", `line 1: ` + dotted},
		{"dotted quoted key", "[context.a]\n\"server\".x = \"y\"", `line 2: ` + dotted},
		{"dotted table", "[context.a.b]", `line 1: ` + dotted},
		{"unknown table", "\n[server]", `line 2: ` + onlyContext},
		{"table without name", "[context]", `line 1: ` + onlyContext},
		{"spaces in header", "[ context.a ]", `line 1: ` + onlyContext},
		{"space before ]", "[context.a ]", `line 1: ` + notClosed},
		{"unclosed header", "[context.a", `line 1: ` + notClosed},
		{"space in name", "[context.my prod]", `line 1: ` + notClosed},
		{"empty context name", `[context.""]`, `line 1: empty context name`},
		{"array of tables", "[[context.a]]", `line 1: arrays of tables ([[...]]) are not supported here`},
		{"text after header", "[context.a] x", `line 1: unexpected text after the table header (a comment starts with #)`},
		{"duplicate key", "[context.a]\nserver = \"\"\n'server' = \"y\"", `line 3: duplicate key server in [context.a]`},
		{"duplicate current", "current-context = \"a\"\ncurrent-context = \"b\"", `line 2: duplicate key current-context before the first [context.NAME] table`},
		{"duplicate table", "[context.a]\n[context.b]\n[context.\"a\"]", `line 3: duplicate table [context.a]`},
		{"bool for string", "[context.a]\nserver = true", `line 2: server must be a string (in quotes) in [context.a]`},
		{"string for bool", "[context.a]\ninsecure = \"true\"", `line 2: insecure must be true or false in [context.a]`},
		{"bool current", "current-context = false", `line 1: current-context must be a string (in quotes) before the first [context.NAME] table`},
		{"unterminated basic", "[context.a]\nserver = \"http://x", `line 2: ` + unterminated},
		{"unterminated literal", "[context.a]\nserver = 'http://x", `line 2: ` + unterminated},
		{"backslash at end", "[context.a]\nserver = \"x\\", `line 2: ` + unterminated},
		{"escaped quote at end", "[context.a]\nserver = \"x\\\"", `line 2: ` + unterminated},
		{"unterminated key", "\"server = 1", `line 1: ` + unterminated},
		{"multi-line basic", "[context.a]\nserver = \"\"\"x\"\"\"", `line 2: ` + multiLine},
		{"multi-line literal", "[context.a]\nserver = '''x'''", `line 2: ` + multiLine},
		{"array", "[context.a]\nserver = [\"x\"]", `line 2: ` + invalidValue},
		{"inline table", "[context.a]\nserver = {x = 1}", `line 2: ` + invalidValue},
		{"number", "[context.a]\nproject = 42", `line 2: ` + invalidValue},
		{"date", "[context.a]\nproject = 1979-05-27", `line 2: ` + invalidValue},
		{"unquoted token", "[context.a]\ntoken = nxa-api_secret", `line 2: ` + invalidValue},
		{"True is not a bool", "[context.a]\ninsecure = True", `line 2: ` + invalidValue},
		{"text after bool", "[context.a]\ninsecure = trueish", `line 2: unexpected text after the value (a comment starts with #)`},
		{"text after value", "[context.a]\nserver = \"a\" \"b\"", `line 2: unexpected text after the value (a comment starts with #)`},
		{"missing value", "[context.a]\nserver =   # nothing", `line 2: missing value after =`},
		{"missing equals", "[context.a]\nserver \"x\"", `line 2: expected = after the key`},
		{"pasted token", "[context.a]\nnxa-api_secret", `line 2: expected = after the key`},
		{"no key", "[context.a]\n= \"x\"", `line 2: expected a key: letters, digits, _ and -, or a name in quotes`},
		{"control in basic", "[context.a]\nserver = \"a\x01b\"", `line 2: control character U+0001 (inside "..." write it as \u0001)`},
		{"DEL in basic", "[context.a]\nserver = \"a\x7fb\"", `line 2: control character U+007F (inside "..." write it as \u007F)`},
		{"NUL in literal", "[context.a]\nserver = 'a\x00b'", `line 2: control character U+0000 (inside "..." write it as \u0000)`},
		{"control in comment", "# a\x02b", `line 1: control character U+0002 (inside "..." write it as \u0002)`},
		{"lone CR", "[context.a]\rserver = \"x\"", `line 1: control character U+000D (inside "..." write it as \u000D)`},
		{"CR ending the last line", "[context.a]\nserver = \"x\"\r", `line 2: control character U+000D (inside "..." write it as \u000D)`},
		{"invalid UTF-8", "[context.a]\n# ok\nserver = \"\xff\"", `line 3: invalid UTF-8: save the file as UTF-8`},
		{"byte order mark", "\ufeff# c\n[context.a]", `line 1: byte order mark (U+FEFF): save the file as UTF-8 without BOM`},
		{"byte order mark on a later line", "# c\n\ufeff[context.a]", `line 2: byte order mark (U+FEFF): save the file as UTF-8 without BOM`},
		{"invalid escape", "[context.a]\nserver = \"a\\xb\"", `line 2: ` + badEscape},
		{"escape 1.1 \\e", "[context.a]\nserver = \"\\e\"", `line 2: ` + badEscape},
		{"\\U escape", "[context.a]\nserver = \"\\U0001F600\"", `line 2: \U escapes are not supported here: write the character itself` + backslash},
		{"Windows path", "[context.a]\nca = \"C:\\Users\\me\"", `line 2: \U escapes are not supported here: write the character itself` + backslash},
		{"regex in a command", "[context.a]\ntoken-command = \"grep '\\d'\"", `line 2: ` + badEscape},
		{"\\u for a printable character", "[context.a]\nserver = \"\\u00e9\"", `line 2: ` + uEscape},
		{"\\u for tab", "[context.a]\nserver = \"\\u0009\"", `line 2: ` + uEscape},
		{"\\u surrogate", "[context.a]\nserver = \"\\uD800\"", `line 2: ` + uEscape},
		{"short \\u", "[context.a]\nserver = \"\\u12\"", `line 2: ` + uEscape},
		{"bad hex \\u", "[context.a]\nserver = \"\\u00G1\"", `line 2: ` + uEscape},
		{"signed \\u", "[context.a]\nserver = \"\\u+001\"", `line 2: ` + uEscape},
		{"CRLF line count", "\r\n# c\r\n\r\n[context.a]\r\nbad\r\n", `line 5: expected = after the key`},
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
	return tomllibLoadAll(t, []string{path})[0]
}

// tomllibLoadAll is tomllibLoad for many files in one Python process.
func tomllibLoadAll(t *testing.T, paths []string) []*Config {
	t.Helper()
	const script = `import json, sys, tomllib
docs = []
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            d = tomllib.load(f)
    except Exception as e:
        sys.exit(f"{path}: {e}")
    d["context"] = [dict(name=k, **v) for k, v in d.get("context", {}).items()]
    docs.append(d)
json.dump(docs, sys.stdout)
`
	out, err := exec.Command("python3", append([]string{"-c", script}, paths...)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("tomllib cannot read a file: %v\n%s", err, stderr)
	}
	var docs []struct {
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
	if err := dec.Decode(&docs); err != nil || len(docs) != len(paths) {
		t.Fatalf("tomllib output %s: %v", out, err)
	}
	cfgs := make([]*Config, len(docs))
	for i, doc := range docs {
		cfgs[i] = &Config{CurrentContext: doc.CurrentContext}
		for _, c := range doc.Context {
			ctx := Context(c)
			cfgs[i].Contexts = append(cfgs[i].Contexts, &ctx)
		}
	}
	return cfgs
}

// needTomllib skips the test, or fails it under CI, without Python 3.11+.
func needTomllib(t *testing.T) {
	t.Helper()
	if out, err := exec.Command(needTool(t, "python3"), "-c", "import tomllib").CombinedOutput(); err != nil {
		skipOrFailInCI(t, "python3 has no tomllib (3.11 or newer needed): %v %s", err, out)
	}
}

// TestConfigTomllib: tomllib reads what we write, and every form we accept,
// as the same data as we do.
func TestConfigTomllib(t *testing.T) {
	needTomllib(t)
	forms := append(configForms(),
		configForm{"written empty", string((&Config{}).marshal()), &Config{}},
		configForm{"written hostile", string(hostileConfig().marshal()), hostileConfig()},
		configForm{"written seed example", string(handEditedWant().marshal()), handEditedWant()})
	dir := t.TempDir()
	paths := make([]string, len(forms))
	for i, form := range forms {
		paths[i] = filepath.Join(dir, fmt.Sprintf("%d.toml", i))
		if err := os.WriteFile(paths[i], []byte(form.input), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	theirs := tomllibLoadAll(t, paths)
	for i, form := range forms {
		ours, err := loadConfig(paths[i])
		if err != nil {
			t.Errorf("%s: %v", form.name, err)
		} else if !cfgEqual(ours, form.want) || !cfgEqual(theirs[i], form.want) {
			t.Errorf("%s: ours:\n%s\ntomllib:\n%s\nwant:\n%s", form.name, cfgString(ours), cfgString(theirs[i]), cfgString(form.want))
		}
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
	want := "config " + path + ": line 3: only [context.NAME] table headers are supported here, with no spaces inside the brackets"
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
		{"not PEM", b64([]byte("hello")), `context "my prod": pinned CA: not a PEM certificate`},
		{"private key", b64(keyPEM), `context "my prod": pinned CA: not a PEM certificate`},
		{"bad DER", b64(badDER), `context "my prod": pinned CA: parse certificate`},
		{"trailing data", b64(append(slices.Clone(caPEM), "junk"...)), `context "my prod": pinned CA: data after the certificate`},
		{"two certificates", b64(append(slices.Clone(caPEM), caPEM...)), `context "my prod": pinned CA: data after the certificate`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := &Context{Name: "my prod", Server: "https://x:6443", CA: tt.ca}
			_, err := ctx.decodeCA()
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("error %q, want prefix %q", err, tt.wantErr)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		got, err := (&Context{Name: "p", CA: encodeCA(caPEM)}).decodeCA()
		if err != nil || !bytes.Equal(pemEncode(got), caPEM) {
			t.Fatalf("decodeCA = %v, %v", got, err)
		}
	})
	t.Run("no pin", func(t *testing.T) {
		got, err := (&Context{Name: "p"}).decodeCA()
		if err != nil || got != nil {
			t.Fatalf("decodeCA = %v, %v", got, err)
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
	for _, form := range configForms() {
		f.Add([]byte(form.input))
	}
	f.Add(hostileConfig().marshal())
	f.Add([]byte("[context.a]\nserver = \"\\uD800\\U0010FFFF\\\"\"\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if cfg, err := parseConfig(data); err == nil {
			checkRoundTrip(t, cfg)
		}
	})
}

// FuzzConfigRoundTrip: any config that updateConfig would save (check
// passes) reads back as itself, whatever its names and values hold.
func FuzzConfigRoundTrip(f *testing.F) {
	f.Add("my prod", "\" \\ \b\t\n\f\r \x00\x1f\x7f é 𝄞 # [context.x] '", true)
	f.Add("a.b", `\u0041 \U0001F600`, false)
	f.Fuzz(func(t *testing.T, name, value string, insecure bool) {
		cfg := &Config{CurrentContext: value, Contexts: []*Context{
			{Name: name, Server: value, Token: value, TokenName: value, TokenEnv: value, TokenCommand: value, Project: value, Insecure: insecure, CA: value, CASHA256: value},
			{Name: value + "2"},
		}}
		if cfg.check() != nil {
			return // invalid UTF-8, an empty or a duplicate name: never saved
		}
		checkRoundTrip(t, cfg)
	})
}
