// Command helyos is a secure-by-default control plane in one binary:
// `helyos daemon` serves the REST API, every other subcommand is its client.
//
// Output rules, for every line the binary prints (TestOutputShapes holds
// the binary to them):
//
//   - stdout carries what the command was asked for and nothing else: a
//     table, JSON with --json, a secret shown once, a script, the help that
//     --help asked for. A failing command prints nothing there.
//   - stderr carries everything meant for a person, one line per message,
//     each starting "helyos: ": "helyos: error: " for the reason a command
//     failed (printed once, by report, from the error it returned), then
//     "helyos: hint: " for each next step the error carries, outermost
//     first; "helyos: warning: " for what works but should not be left as
//     it is; plain "helyos: " for a confirmation ("helyos: revoked token
//     "ci""). Messages are lower-case with no full stop, name the thing
//     (context "prod", --ttl, the file path) and the cause.
//   - A usage error (exit 2) starts with the command as typed and a colon
//     ("context set: --server: ..."), unless it is about helyos itself (an
//     unknown command, a global flag); a run-time error (exit 1) starts with
//     the step that failed ("revoke token "ci": ..."). No message repeats a
//     prefix or the command name, nor uses the flag package's own words: a
//     flag is always spelled --name.
//   - An error the daemon sent is relayed after the step that met it, as
//     "the daemon answered: MESSAGE (HTTP STATUS)", control characters
//     escaped and tokens redacted, like anything that repeats outside input.
//   - Lines to copy into a shell stand alone, indented two spaces, after a
//     "helyos: " line that says what they are for.
//   - The daemon's log lines are "DATE TIME helyos: [warning: |error: |
//     hint: |debug: ]message" (no time under journald, one JSON object per
//     line with --log-format json); a daemon that cannot start reports the
//     reason as any command does.
//   - Exceptions: the lines the product pages quote exactly (the first-run
//     token, "Generated new API token ..." then HELYOS_API_TOKEN=...; the
//     login prompt for a CA, "The server ... presented a self-signed CA:",
//     "SHA-256: ...", "Trust and pin this CA? [y/N]"); the usage that a
//     bare `helyos` prints on stderr before its error; and what a failing
//     token-command wrote to stderr, passed on as it came, tokens redacted.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"text/tabwriter"
)

// buildVersion names this build from what the Go toolchain recorded in it:
// the module version ("(devel)" when no version control information was
// available), then the commit, with "-dirty" when the tree had changes. No
// -ldflags needed.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	return versionOf(info)
}

func versionOf(info *debug.BuildInfo) string {
	var revision, dirty string
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision":
			revision = s.Value
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "-dirty"
		}
	}
	if revision == "" {
		return info.Main.Version
	}
	return info.Main.Version + " (" + revision + dirty + ")"
}

// command is one client subcommand; the table below is both the dispatch
// and the usage text, so the two cannot drift apart.
type command struct {
	name, args, summary string
	run                 func(g *globals, args []string) error
}

func commands() []command {
	return []command{
		{"login", "SERVER", "log in to a daemon, pin its CA and save it as a context", cmdLogin},
		{"logout", "[NAME]", "forget the token of a context (default: the active one)", cmdLogout},
		{"whoami", "", "show the identity of the active token", cmdWhoami},
		{"context", "ls|use|current|rename|rm|set", "list and manage contexts", cmdContext},
		{"auth", "token create|ls|revoke|rotate", "mint, list, revoke and rotate API tokens", cmdAuth},
		{"events", "[--follow] [--since DURATION|SEQ]", "show the daemon's audit events, or follow them", cmdEvents},
		{"audit", "verify [FILE...]", "check the audit log's hash chain (no daemon needed)", cmdAudit},
		{"status", "", "check the daemon: reachable, version, TLS, identity", cmdStatus},
		{"version", "", "print the client and daemon versions", cmdVersion},
		{"completion", "bash|zsh|fish", "print a shell completion script", cmdCompletion},
	}
}

func main() {
	os.Exit(run(os.Args, &stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr}))
}

// run dispatches argv and turns an error into its exit code: 2 for usage
// errors, 1 for everything else.
func run(argv []string, std *stdio) int {
	args := argv[1:]
	if strings.TrimSuffix(filepath.Base(argv[0]), ".exe") == "helyosd" {
		args = append([]string{"daemon"}, args...)
	}
	switch {
	case len(args) == 0: // runClient prints the usage
	case len(args) > 1 && args[0] == "help": // help COMMAND is COMMAND --help
		return run(append(append([]string{argv[0]}, args[1:]...), "--help"), std)
	case args[0] == "help" || isHelp(args[0]):
		usage(std.out)
		return 0
	case args[0] == "--version":
		fmt.Fprintf(std.out, "helyos %s\n", buildVersion())
		return 0
	case args[0] == "daemon":
		return report(runDaemon(args[1:], std), std.err)
	case args[0] == completeCommand: // the candidates for the last word, one a line; never an error
		for _, c := range completions(args[1:]) {
			fmt.Fprintln(std.out, c)
		}
		return 0
	}
	return report(runClient(args, std), std.err)
}

func runClient(args []string, std *stdio) error {
	g, rest, err := parseGlobals(args, std)
	if err != nil {
		return err
	}
	switch {
	case len(rest) == 0:
		usage(std.err)
		return usageErrorf("no command given")
	case isHelp(rest[0]):
		usage(std.out)
		return nil
	case strings.HasPrefix(rest[0], "-"):
		return withHint(usageErrorf("unknown flag %q", rest[0]), "run 'helyos --help' to see the commands and the global flags")
	}
	for _, c := range commands() {
		if c.name == rest[0] {
			return c.run(g, rest[1:])
		}
	}
	return withHint(usageErrorf("unknown command %q", rest[0]), "run 'helyos --help' to see the commands")
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "helyos %s: a secure-by-default control plane\n\nUsage:\n  helyos daemon [flags]   run the REST API server (also: helyosd)\n  helyos COMMAND [flags]  talk to a daemon\n  helyos --version        print the client's version\n\nCommands:\n", buildVersion())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.args, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, `
Global flags (before or after the command):
  --context NAME   use this context for one command (else $HELYOS_CONTEXT, else current-context)
  --server URL     daemon to talk to (else $HELYOS_SERVER, else the context)
  --token TOKEN    API token, seen by ps and shell history: prefer $HELYOS_API_TOKEN or a context
  --json           print data as JSON

Run 'helyos COMMAND --help' for a command's flags.
`)
}

// printFlags lists a flag set's flags under "Flags:", spelled --name as
// everywhere else (the flag package would print -name).
func printFlags(w io.Writer, flags *flag.FlagSet) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	heading := "\nFlags:\n" // only above a first flag
	flags.VisitAll(func(f *flag.Flag) {
		fmt.Fprint(tw, heading)
		heading = ""
		arg, about := flag.UnquoteUsage(f)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			about += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(tw, "  --%s %s\t%s\n", f.Name, arg, about)
	})
	tw.Flush()
}

// usageError marks a mistake in how the command was called (exit code 2).
// It wraps, so a cause given with %w keeps its own hint.
type usageError struct{ error }

func (e *usageError) Unwrap() error { return e.error }

func usageErrorf(format string, a ...any) error {
	return &usageError{fmt.Errorf(format, a...)}
}

// hintError carries a next step for the user; report prints "helyos: hint: ...".
// The hint travels with the error so that commands never print in the middle
// of failing.
type hintError struct {
	error
	hint string
}

func (e *hintError) Unwrap() error { return e.error }

// withHint attaches a hint to err; a nil err stays nil so callers can wrap
// a result without checking it first.
func withHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return &hintError{err, hint}
}

// errLogged is an error the daemon has already written to its JSON log.
var errLogged = errors.New("the error is in the log")

// report prints err the one way every command's errors are printed and
// returns the exit code.
func report(err error, w io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == errLogged {
		return 1
	}
	// An error or a hint may repeat what a server sent or what the user
	// typed: control characters are escaped and anything shaped like a
	// token is hidden. Every hint on the chain is printed, outermost first
	// as the error reads: an outer one may not replace what the cause knew.
	fmt.Fprintf(w, "helyos: error: %s\n", sanitize(redactTokens(err.Error())))
	for e, h := err, (*hintError)(nil); errors.As(e, &h); e = h.error {
		fmt.Fprintf(w, "helyos: hint: %s\n", sanitize(redactTokens(h.hint)))
	}
	if _, ok := errors.AsType[*usageError](err); ok {
		return 2
	}
	return 1
}
