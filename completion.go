package main

import (
	"flag"
	"io"
	"maps"
	"slices"
	"strings"
)

// Shell completion. The scripts are thin: on every TAB they run the hidden
// command `helyos __complete WORD...` with the words typed so far, and it
// answers from the command table, the commands' own flag sets and the config
// file. The candidates cannot drift from the dispatch, the three shells
// complete alike, and no daemon is ever called.

const completeCommand = "__complete"

const bashCompletion = `# helyos completion for bash: source <(helyos completion bash)
_helyos() {
	local IFS=$'\n'
	COMPREPLY=($("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null))
}
complete -o default -F _helyos helyos
`

const zshCompletion = `#compdef helyos
# helyos completion for zsh: source <(helyos completion zsh), after compinit
_helyos() {
	local -a candidates
	candidates=(${(f)"$("${words[1]}" __complete "${(@)words[2,CURRENT]}" 2>/dev/null)"})
	compadd -a candidates || _files
}
compdef _helyos helyos
`

const fishCompletion = `# helyos completion for fish: helyos completion fish | source
function __helyos_complete
	set -l words (commandline -opc)
	set -l current (commandline -ct)
	set -l candidates ($words[1] __complete $words[2..-1] "$current" 2>/dev/null)
	if set -q candidates[1]
		printf '%s\n' $candidates
	else
		__fish_complete_path "$current"
	end
end
complete -c helyos -f -a '(__helyos_complete)'
`

func cmdCompletion(g *globals, args []string) error {
	flags := g.newFlags("completion", "bash|zsh|fish", "Print a completion script for the shell. Load it with:\n  bash: source <(helyos completion bash)\n  zsh:  source <(helyos completion zsh)\n  fish: helyos completion fish | source")
	pos, err := g.parseFlagsNoData(flags, args, 1, 1)
	if err != nil {
		return err
	}
	script, ok := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}[pos[0]]
	if !ok {
		return usageErrorf("completion: no script for %q; give bash, zsh or fish", pos[0])
	}
	_, err = io.WriteString(g.io.out, script)
	return err
}

// completions returns what may stand in place of the last of words (the
// words after "helyos"): a subcommand, a flag after a "-", a context name
// after --context or where a command takes one, or nothing (the shell then
// offers files).
func completions(words []string) []string {
	if len(words) == 0 {
		words = []string{""}
	}
	typed, current := words[:len(words)-1], words[len(words)-1]
	var path, positional []string
	flags := flagsAt(path)
	for i := 0; i < len(typed); i++ {
		w := typed[i]
		switch {
		case strings.HasPrefix(w, "-"):
			name, _, inline := strings.Cut(strings.TrimLeft(w, "-"), "=")
			if !flags[name] || inline {
				continue
			}
			if i == len(typed)-1 { // current is this flag's value
				if name == "context" {
					return withPrefix(contextNames(), current)
				}
				return nil
			}
			i++
		case len(positional) == 0 && slices.Contains(subcommands(path), w):
			path = append(path, w)
			flags = flagsAt(path)
		default:
			positional = append(positional, w)
		}
	}
	switch name := strings.Join(path, " "); {
	case strings.HasPrefix(current, "-"):
		var names []string
		for f := range flags {
			names = append(names, "--"+f)
		}
		return withPrefix(names, current)
	case len(positional) > 0:
		return nil
	case subcommands(path) != nil:
		return withPrefix(subcommands(path), current)
	case slices.Contains([]string{"context use", "context rm", "context rename", "context set", "logout"}, name):
		return withPrefix(contextNames(), current)
	}
	return nil
}

// subcommands are the words that may follow path.
func subcommands(path []string) []string {
	subs := map[string][]string{
		"":           {"daemon"},
		"context":    slices.Collect(maps.Keys(contextCommands())),
		"auth":       {"token"},
		"auth token": slices.Collect(maps.Keys(tokenCommands())),
		"completion": {"bash", "zsh", "fish"},
		"audit":      {"verify"},
	}
	for _, c := range commands() {
		subs[""] = append(subs[""], c.name)
	}
	return subs[strings.Join(path, " ")]
}

// flagsAt maps the flags valid after path to whether each takes a value.
// A client command's flags are read from its own flag set, made by asking
// it for its help, which every command answers before it does anything.
func flagsAt(path []string) map[string]bool {
	flags := map[string]bool{"context": true, "server": true, "token": true, "json": false} // parseGlobals'
	var set *flag.FlagSet
	switch {
	case len(path) > 0 && path[0] == "daemon":
		flags, set = map[string]bool{}, daemonFlags(&daemonConfig{}, io.Discard)
	case len(path) > 0:
		g := &globals{io: &stdio{out: io.Discard, err: io.Discard}}
		for _, c := range commands() {
			if c.name == path[0] {
				c.run(g, append(slices.Clone(path[1:]), "--help"))
			}
		}
		set = g.flags
	}
	if set != nil {
		set.VisitAll(func(f *flag.Flag) {
			b, isBool := f.Value.(interface{ IsBoolFlag() bool })
			flags[f.Name] = !isBool || !b.IsBoolFlag()
		})
	}
	return flags
}

// contextNames are the contexts in the config file; none when it cannot be
// read. A name the CLI would not accept (one edited in by hand, say "p;id")
// is left out: bash puts a candidate into the command line unquoted.
func contextNames() []string {
	path, err := configPath()
	if err != nil {
		return nil
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return nil
	}
	var names []string
	for _, c := range cfg.Contexts {
		if checkContextName(c.Name) == nil {
			names = append(names, c.Name)
		}
	}
	return names
}

// withPrefix returns the sorted candidates that start with prefix. It
// reuses candidates, which every caller builds afresh.
func withPrefix(candidates []string, prefix string) []string {
	out := slices.DeleteFunc(candidates, func(c string) bool { return !strings.HasPrefix(c, prefix) })
	slices.Sort(out)
	return slices.Compact(out)
}
