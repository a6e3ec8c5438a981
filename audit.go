package main

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	auditFileName       = "audit.log"
	auditKeep           = 5 // rotated files kept: audit.log.1 (newest) to audit.log.5
	defaultAuditMaxSize = 64 << 20
	// auditWindow is how often at most one record of refusals (auth.failed,
	// scope.denied, connections.limited) is written per event, actor and
	// address, so that a flood cannot fill the disk.
	auditWindow = 10 * time.Second
	// maxTallies bounds the addresses tallied in one window; the refusals
	// of any further address share one record whose remote is "*".
	maxTallies = 1000
	// auditTailBytes is how much of the log's end is read at start to find
	// the last record; a record is far shorter.
	auditTailBytes = 64 << 10
	// Event streams: how many may be open, and how many records each may
	// fall behind before it loses some.
	maxEventSubscribers = 32
	eventBuffer         = 256
)

// Outcomes of a recorded event.
const (
	outcomeSuccess = "success"
	outcomeFailure = "failure" // a recorded change could not be saved, and was undone
	outcomeDenied  = "denied"
)

// zeroHash is the prev of the first record of a new log.
var zeroHash = strings.Repeat("0", 64)

var errAuditUnavailable = errors.New("the audit log cannot be written")

// auditRecord is one line of audit.log. It never holds a token, a hash or
// a lookup prefix: actor and target are token names, remote an IP address.
type auditRecord struct {
	Seq     uint64         `json:"seq"`
	Time    time.Time      `json:"time"`
	Event   string         `json:"event"`
	Actor   *string        `json:"actor"`
	Remote  *string        `json:"remote"`
	Target  *string        `json:"target"`
	Outcome string         `json:"outcome"`
	Detail  map[string]any `json:"detail"`
	Prev    string         `json:"prev"`
}

// auditEvent is a written record as the event stream sends it.
type auditEvent struct {
	seq  uint64
	name string
	line []byte // the record's JSON, without its newline
}

// auditLog is DATA_DIR/audit.log: one JSON line per security event, each
// carrying the SHA-256 of the line before it, so that editing, removing or
// reordering a line breaks the chain that `helyos audit verify` walks.
// When the file would grow past maxSize it becomes audit.log.1 (and .1
// becomes .2, up to .5, the oldest, which is dropped) and the chain goes on
// in a fresh audit.log.
//
// State changes go through record, which writes and fsyncs before it
// returns, so the caller makes a change only once it is on disk. Refusals
// only bump an in-memory tally under a short mutex; run writes them later,
// one record per event, actor and address per auditWindow: a flood adds no
// I/O to the request path and at most one line per address per window.
//
// Every written record is handed to the event stream's subscribers without
// ever waiting for them: one that falls behind loses records and is told.
type auditLog struct {
	dir     string
	maxSize int64
	now     func() time.Time
	logger  *log.Logger

	mu        sync.Mutex // writes, rotation and subscriptions
	f         *os.File   // nil after a failed rotation: the next write opens it again
	size      int64
	seq       uint64
	prev      string
	broken    error                    // set when a partial line could not be removed, or an undone change could not be recorded as such: nothing more is written
	unclean   bool                     // the log did not end in daemon.stopped when opened: a change recorded last may not have been saved
	subs      map[chan auditEvent]bool // nil once the daemon is stopping: no new subscribers
	subBuffer int
	maxSubs   int

	tallyMu sync.Mutex
	tallies map[tallyKey]*tally
	queued  []auditRecord
}

type tallyKey struct{ event, actor, remote string }

type tally struct {
	key     tallyKey
	first   time.Time
	count   int
	reasons map[string]int
}

// openAuditLog opens dir's audit log for appending and carries on its chain:
// the last record of the newest non-empty file gives the next seq and prev.
// A line cut short by a crash at the end of audit.log was never
// acknowledged; it is removed, with a warning.
func openAuditLog(dir string, maxSize int64, now func() time.Time, logger *log.Logger) (*auditLog, error) {
	a := &auditLog{dir: dir, maxSize: maxSize, now: now, logger: logger, prev: zeroHash,
		subs: map[chan auditEvent]bool{}, subBuffer: eventBuffer, maxSubs: maxEventSubscribers, tallies: map[tallyKey]*tally{}}
	if err := a.openLocked(); err != nil {
		return nil, err
	}
	if err := a.resume(); err != nil {
		a.f.Close()
		return nil, err
	}
	return a, nil
}

// resume finds the last record, removing a torn line from audit.log's end.
func (a *auditLog) resume() error {
	for _, path := range slices.Backward(auditFiles(a.dir)) {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		line, torn, err := tailLine(f)
		f.Close()
		if err != nil {
			return err
		}
		if path == a.path(0) && torn > 0 {
			if err := a.f.Truncate(a.size - torn); err != nil {
				return fmt.Errorf("remove a partial line from %s: %w", a.path(0), err)
			}
			a.size -= torn
			a.logger.Printf("warning: removed a partial last line (%d bytes) from %s, left by a crash while it was written", torn, a.path(0))
		}
		if line == nil {
			continue
		}
		var rec auditRecord
		if json.Unmarshal(line, &rec) != nil || rec.Seq == 0 {
			return withHint(fmt.Errorf("the last line of %s is not an audit record", path),
				"check the files with 'helyos audit verify', then move them aside to start a new chain")
		}
		a.seq, a.prev, a.unclean = rec.Seq, hashLine(line), rec.Event != "daemon.stopped"
		return nil
	}
	return nil
}

// tailLine returns the last complete line of f, newline included (nil for
// an empty file), and the number of bytes after it. It leaves f's offset
// alone.
func tailLine(f *os.File) (line []byte, torn int64, err error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	off := max(fi.Size()-auditTailBytes, 0)
	tail := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(tail, off); err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	end := bytes.LastIndexByte(tail, '\n') + 1
	start := bytes.LastIndexByte(tail[:max(end-1, 0)], '\n') + 1
	if start == 0 && off > 0 {
		return nil, 0, fmt.Errorf("read %s: no complete line in its last %d bytes", f.Name(), auditTailBytes)
	}
	if end == 0 {
		return nil, int64(len(tail)), nil
	}
	return tail[start:end], int64(len(tail) - end), nil
}

func hashLine(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// path is audit.log for 0, audit.log.N for N.
func (a *auditLog) path(n int) string {
	name := auditFileName
	if n > 0 {
		name += "." + strconv.Itoa(n)
	}
	return filepath.Join(a.dir, name)
}

// auditFiles lists the audit log files in dir that exist, oldest first.
func auditFiles(dir string) []string {
	a := &auditLog{dir: dir}
	var out []string
	for i := auditKeep; i >= 0; i-- {
		if _, err := os.Stat(a.path(i)); err == nil {
			out = append(out, a.path(i))
		}
	}
	return out
}

func (a *auditLog) openLocked() error {
	f, err := os.OpenFile(a.path(0), os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	fi, err := f.Stat()
	if err == nil {
		err = errors.Join(f.Chmod(0o600), syncFolder(a.dir))
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("open audit log %s: %w", a.path(0), err)
	}
	a.f, a.size = f, fi.Size()
	return nil
}

func orNull(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (a *auditLog) newRecord(event, actor, remote, target, outcome string, detail map[string]any) auditRecord {
	return auditRecord{Time: a.now().UTC().Truncate(time.Millisecond), Event: event, Actor: orNull(actor),
		Remote: orNull(remote), Target: orNull(target), Outcome: outcome, Detail: detail}
}

// record writes one event and fsyncs it before it returns. An error wraps
// errAuditUnavailable (and is logged): the caller must then not make the
// change it was about to make. Empty actor, remote and target are null.
func (a *auditLog) record(event, actor, remote, target, outcome string, detail map[string]any) error {
	rec := a.newRecord(event, actor, remote, target, outcome, detail)
	a.mu.Lock()
	defer a.mu.Unlock()
	seq, prev := a.seq, a.prev
	ev, err := a.appendLocked(rec)
	if err == nil {
		if err = a.f.Sync(); err != nil {
			a.seq, a.prev = seq, prev
			a.truncateLocked(a.size - int64(len(ev.line)+1))
		}
	}
	if err != nil {
		a.logger.Printf("error: audit: %s: %v", event, err)
		return fmt.Errorf("%w: %v", errAuditUnavailable, err)
	}
	a.publishLocked(ev)
	return nil
}

// change is the recorder a token store change calls under the store's lock,
// once the change by actor from remote is decided and before it is saved.
// When the record of a change undone cannot be written, the log claims a
// change that was not made: nothing more is written, so that nothing more
// changes and the next start marks the stop unclean.
func (a *auditLog) change(event, actor, remote string) recordChange {
	return func(t tokenInfo, outcome string) error {
		err := a.record(event, actor, remote, t.Name, outcome, map[string]any{"scope": t.Scope, "expires_at": t.ExpiresAt, "allow_from": t.AllowFrom})
		if err != nil && outcome == outcomeFailure {
			a.mu.Lock()
			a.broken = fmt.Errorf("the log says %s %q succeeded, but it was undone and that could not be recorded; restart the daemon", event, t.Name)
			a.mu.Unlock()
		}
		return err
	}
}

// appendLocked chains rec to the log and writes it, rotating first when the
// line would take the file past maxSize. The caller syncs.
func (a *auditLog) appendLocked(rec auditRecord) (auditEvent, error) {
	if a.broken != nil {
		return auditEvent{}, a.broken
	}
	rec.Seq, rec.Prev = a.seq+1, a.prev
	line, err := json.Marshal(rec)
	if err != nil {
		return auditEvent{}, fmt.Errorf("encode audit record: %w", err)
	}
	line = append(line, '\n')
	if a.f != nil && a.size > 0 && a.size+int64(len(line)) > a.maxSize {
		if err := a.rotateLocked(); err != nil {
			return auditEvent{}, err
		}
	}
	if a.f == nil {
		if err := a.openLocked(); err != nil {
			return auditEvent{}, err
		}
	}
	if n, err := a.f.Write(line); err != nil {
		if n > 0 {
			a.truncateLocked(a.size)
		}
		return auditEvent{}, fmt.Errorf("write %s: %w", a.path(0), err)
	}
	a.size += int64(len(line))
	a.seq, a.prev = rec.Seq, hashLine(line)
	return auditEvent{seq: rec.Seq, name: rec.Event, line: line[:len(line)-1]}, nil
}

// truncateLocked cuts audit.log back to size after a failed write. If even
// that fails, the file ends in a line that is not a whole record, so nothing
// more is written until a restart removes it.
func (a *auditLog) truncateLocked(size int64) {
	if err := a.f.Truncate(size); err != nil {
		a.broken = fmt.Errorf("%s ends in a partial record that could not be removed (%v); restart the daemon", a.path(0), err)
		return
	}
	a.size = size
}

func (a *auditLog) rotateLocked() error {
	err := errors.Join(a.f.Sync(), a.f.Close())
	a.f = nil
	if err != nil {
		return fmt.Errorf("rotate %s: %w", a.path(0), err)
	}
	for i := auditKeep; i > 0; i-- {
		if err := os.Rename(a.path(i-1), a.path(i)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotate %s: %w", a.path(i-1), err)
		}
	}
	return a.openLocked()
}

func (a *auditLog) publishLocked(ev auditEvent) {
	for sub := range a.subs {
		select {
		case sub <- ev:
		default: // full: this subscriber misses ev and learns it from the gap in seq
		}
	}
}

// tally counts one refusal toward its window's record: auth.failed (a
// refused bearer token from remote; reason is one of the errToken* reasons),
// scope.denied (a request by actor that its token's scope does not allow;
// reason is the route pattern it asked for) or connections.limited (a
// connection from remote closed because of a cap: reason is "total" or
// "per-address" (closed as soon as accepted), or "evicted" (its place given
// to a newcomer from a less busy address)).
func (a *auditLog) tally(event, actor, remote, reason string) {
	a.tallyMu.Lock()
	defer a.tallyMu.Unlock()
	k := tallyKey{event, actor, remote}
	t := a.tallies[k]
	if t == nil && len(a.tallies) >= maxTallies {
		k.actor, k.remote = "", "*"
		t = a.tallies[k]
	}
	if t == nil {
		t = &tally{key: k, first: a.now().UTC().Truncate(time.Millisecond), reasons: map[string]int{}}
		a.tallies[k] = t
	}
	t.count++
	t.reasons[reason]++
}

// later queues a record for run to write off the request path, such as the
// token.expired of a token's first refused use.
func (a *auditLog) later(event, actor, remote, target string) {
	rec := a.newRecord(event, actor, remote, target, outcomeDenied, nil)
	a.tallyMu.Lock()
	defer a.tallyMu.Unlock()
	if len(a.queued) < maxTallies {
		a.queued = append(a.queued, rec)
	}
}

// due takes the queued records and the tallies whose window has ended (all
// of them when all is set) as records.
func (a *auditLog) due(all bool) []auditRecord {
	var done []*tally
	now := a.now()
	a.tallyMu.Lock()
	out := a.queued
	a.queued = nil
	for k, t := range a.tallies {
		if all || now.Sub(t.first) >= auditWindow {
			done = append(done, t)
			delete(a.tallies, k)
		}
	}
	a.tallyMu.Unlock()
	slices.SortFunc(done, func(x, y *tally) int {
		return cmp.Or(x.first.Compare(y.first), strings.Compare(x.key.remote, y.key.remote))
	})
	for _, t := range done {
		out = append(out, a.newRecord(t.key.event, t.key.actor, t.key.remote, "", outcomeDenied,
			map[string]any{"count": t.count, "reasons": t.reasons, "first": t.first}))
	}
	return out
}

// flush writes what is due with one fsync for the lot: none of it
// acknowledges a change. An error is also logged.
func (a *auditLog) flush(all bool) error {
	recs := a.due(all)
	a.mu.Lock()
	defer a.mu.Unlock()
	var written []auditEvent
	var err error
	for _, rec := range recs {
		ev, werr := a.appendLocked(rec)
		if werr != nil {
			err = fmt.Errorf("audit: %d records lost: %w", len(recs)-len(written), werr)
			break
		}
		written = append(written, ev)
	}
	if len(written) > 0 {
		if serr := a.f.Sync(); serr != nil {
			err = errors.Join(err, fmt.Errorf("audit: sync %s: %w", a.path(0), serr))
		}
	}
	for _, ev := range written {
		a.publishLocked(ev)
	}
	if err != nil {
		a.logger.Printf("error: %v", err)
	}
	return err
}

// run writes the tallies and queued records once a second until done
// closes.
func (a *auditLog) run(done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			a.flush(false)
		}
	}
}

// stop writes everything pending and daemon.stopped, then closes the file.
func (a *auditLog) stop(cause error) {
	a.flush(true)
	outcome, detail := outcomeSuccess, map[string]any(nil)
	if cause != nil {
		outcome, detail = outcomeFailure, map[string]any{"error": cause.Error()}
	}
	a.record("daemon.stopped", "", "", "", outcome, detail)
	a.close()
}

// close closes the file; nothing more is written.
func (a *auditLog) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.f.Close() // nil after a failed rotation, or closed already: an error, ignored
	a.broken = errors.New("the audit log is closed")
}

// subscribe registers an event stream and returns the seq of the last
// record written before it. With replay it also opens the log files, oldest
// first, under the same lock, so a rotation cannot slip between them and
// every record up to that seq is in them (or was rotated away); later ones
// reach the subscriber live.
func (a *auditLog) subscribe(replay bool) (chan auditEvent, []*os.File, uint64, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.subs == nil:
		return nil, nil, 0, errors.New("the daemon is stopping")
	case len(a.subs) >= a.maxSubs:
		return nil, nil, 0, fmt.Errorf("%d event streams are open already; try again later", maxEventSubscribers)
	}
	var files []*os.File
	for i := auditKeep; replay && i >= 0; i-- {
		f, err := os.Open(a.path(i))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			closeAll(files)
			return nil, nil, 0, err
		}
		files = append(files, f)
	}
	sub := make(chan auditEvent, a.subBuffer)
	a.subs[sub] = true
	return sub, files, a.seq, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

func (a *auditLog) unsubscribe(sub chan auditEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.subs, sub)
}

// closeSubscribers ends every event stream: the daemon is stopping.
func (a *auditLog) closeSubscribers() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for sub := range a.subs {
		close(sub)
	}
	a.subs = nil
}

// eachLine calls fn with every line of f, newline included (the last line
// may lack one), numbered from 1. A line longer than auditTailBytes is none
// the daemon writes (or could start after), and is refused rather than read
// whole into memory.
func eachLine(f *os.File, fn func(n int, line []byte) error) error {
	br := bufio.NewReaderSize(f, auditTailBytes)
	for n := 1; ; n++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return fmt.Errorf("%s:%d: longer than %d bytes: not an audit record", f.Name(), n, auditTailBytes)
		}
		if len(line) > 0 {
			if ferr := fn(n, line); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// chainSummary is what `helyos audit verify` found in an intact chain.
type chainSummary struct {
	Files    []string `json:"files"`
	Records  int      `json:"records"`
	FirstSeq uint64   `json:"first_seq"`
	LastSeq  uint64   `json:"last_seq"`
}

// verifyChain walks the records of paths, oldest file first, and returns
// an error naming the file and line of the first record whose seq or prev
// does not follow from the line before it. The first record may start
// after seq 1 (older files rotated away); seq 1 must have the zero prev.
func verifyChain(paths []string) (chainSummary, error) {
	var sum chainSummary
	var prevHash, prevAt string
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return sum, fmt.Errorf("open audit log: %w", err)
		}
		err = eachLine(f, func(n int, line []byte) error {
			at := fmt.Sprintf("%s:%d", p, n)
			var rec auditRecord
			switch {
			case !bytes.HasSuffix(line, []byte("\n")):
				return fmt.Errorf("%s: the last line is incomplete (no newline): a write was cut short, or is under way", at)
			case json.Unmarshal(line, &rec) != nil || rec.Seq == 0 || len(rec.Prev) != 64:
				return fmt.Errorf("%s: not an audit record", at)
			case sum.Records == 0 && rec.Seq == 1 && rec.Prev != zeroHash:
				return fmt.Errorf("%s: record 1 must have a prev of 64 zeros", at)
			case sum.Records > 0 && rec.Seq != sum.LastSeq+1:
				return fmt.Errorf("%s: seq %d does not follow seq %d at %s: records were removed, reordered or inserted", at, rec.Seq, sum.LastSeq, prevAt)
			case sum.Records > 0 && rec.Prev != prevHash:
				return fmt.Errorf("%s: prev is not the SHA-256 of the line before it, %s: that line was changed, or lines were replaced", at, prevAt)
			}
			sum.FirstSeq = cmp.Or(sum.FirstSeq, rec.Seq)
			sum.Records++
			sum.LastSeq, prevHash, prevAt = rec.Seq, hashLine(line), at
			return nil
		})
		f.Close()
		if err != nil {
			return sum, err
		}
		sum.Files = append(sum.Files, p)
	}
	if sum.Records == 0 {
		return sum, errors.New("no audit records in the files given")
	}
	return sum, nil
}
