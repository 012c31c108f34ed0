package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// tty draws with mpb: the overall bar on top, then a bar per item in
// flight (and, with Layers, a bar per layer under it). A finished item's
// bar is removed and its result line printed above the bars, so the
// screen ends as one line per item and the final line.
type tty struct {
	opts Options
	p    *mpb.Progress

	// mu guards the board's structure; decorators never take it (they
	// run on mpb's goroutines while bar calls wait for them).
	mu       sync.Mutex
	overall  *mpb.Bar
	nextPrio int
	items    []*ttyItem
	closed   bool

	// dmu guards what decorators read.
	dmu      sync.Mutex
	label    string
	counts   Counts
	nameWide int
}

const (
	barWidth  = 30
	layerBars = 64 // at most this many layer bars under one item
)

// Marks before a result line.
const (
	markOK      = "✔"
	markFailed  = "✘"
	markNeutral = "•"
)

func newTTY(opts Options) *tty {
	options := []mpb.ContainerOption{
		mpb.WithOutput(opts.Out),
		mpb.WithRefreshRate(opts.RefreshRate),
		mpb.WithAutoRefresh(),
	}
	if f, ok := opts.Out.(*os.File); !ok || !isTerminal(f) || !sized(f) {
		// Not a terminal (--progress=tty on a pipe), or one that does not
		// know its size (a pty nobody sized): draw 100 columns.
		options = append(options, mpb.WithOutput(plainWriter{opts.Out}), mpb.ForceTTY(), mpb.WithWidth(100))
	}
	return &tty{opts: opts, p: mpb.New(options...), nextPrio: 1024, nameWide: 8}
}

// plainWriter hides that a writer is an *os.File, so mpb does not ask
// the terminal its size.
type plainWriter struct{ io.Writer }

// sized reports whether the terminal f knows its size.
func sized(f *os.File) bool {
	w, h, err := term.GetSize(int(f.Fd()))
	return err == nil && w > 0 && h > 0
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (t *tty) Println(line string) {
	t.p.Write([]byte(line + "\n"))
}

func (t *tty) Overall(label string, c Counts) {
	t.dmu.Lock()
	t.label, t.counts = label, c
	t.dmu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if t.overall == nil {
		t.overall = t.p.New(0, mpb.BarStyle(), mpb.BarWidth(barWidth), mpb.BarPriority(0), mpb.BarNoPop(), mpb.BarRemoveOnComplete(),
			mpb.PrependDecorators(decor.Any(func(decor.Statistics) string {
				t.dmu.Lock()
				defer t.dmu.Unlock()
				return t.label
			}, decor.WCSyncSpaceR)),
			mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
				t.dmu.Lock()
				defer t.dmu.Unlock()
				c := t.counts
				s := fmt.Sprintf("%d/%d tenants: %d succeeded, %d failed, %d waiting", c.Succeeded+c.Failed+c.Skipped, c.Total, c.Succeeded, c.Failed, c.Waiting())
				if c.Skipped > 0 {
					s += fmt.Sprintf(", %d skipped", c.Skipped)
				}
				return s
			})),
		)
	}
	t.overall.SetTotal(int64(max(c.Total, 1)), false)
	t.overall.SetCurrent(int64(c.Succeeded + c.Failed + c.Skipped))
}

func (t *tty) Item(key, name string) Item {
	t.dmu.Lock()
	t.nameWide = max(t.nameWide, len([]rune(name)))
	t.dmu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	it := &ttyItem{board: t, name: name, prio: t.nextPrio, status: "waiting"}
	t.nextPrio += layerBars + 1
	t.items = append(t.items, it)
	if t.closed {
		it.done = true
		return it
	}
	it.bar = t.p.New(0, mpb.BarStyle(), mpb.BarWidth(barWidth), mpb.BarPriority(it.prio), mpb.BarNoPop(), mpb.BarRemoveOnComplete(),
		mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return it.name }, decor.WCSyncSpaceR)),
		mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
			it.smu.Lock()
			defer it.smu.Unlock()
			return it.status
		})),
	)
	return it
}

func (t *tty) Close(final string) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	items := append([]*ttyItem(nil), t.items...)
	overall := t.overall
	t.mu.Unlock()
	for _, it := range items {
		it.remove()
	}
	if overall != nil {
		overall.Abort(true)
	}
	// A bar that leaves at once makes mpb draw a last frame, so lines
	// printed since the last one are on the screen before Wait returns.
	flush := t.p.New(0, mpb.NopStyle(), mpb.BarNoPop(), mpb.BarRemoveOnComplete())
	flush.Abort(true)
	t.p.Wait()
	if final != "" {
		fmt.Fprintln(t.opts.Out, final)
	}
}

type ttyItem struct {
	board *tty
	name  string
	prio  int
	bar   *mpb.Bar

	// mu guards the item's operations and layers (never taken by
	// decorators).
	mu     sync.Mutex
	layers map[string]*layerBar
	order  int
	done   bool

	// smu guards the texts decorators read.
	smu    sync.Mutex
	status string
}

type layerBar struct {
	bar    *mpb.Bar
	status string // guarded by the item's smu
}

func (it *ttyItem) setStatus(s string) {
	it.smu.Lock()
	it.status = s
	it.smu.Unlock()
}

func (it *ttyItem) State(text string) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.done {
		return
	}
	it.setStatus(text)
}

func (it *ttyItem) Progress(s Step) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.done {
		return
	}
	it.setStatus(StepText(s))
	if s.Pull {
		if s.Total > 0 {
			it.bar.SetTotal(int64(s.Total), false)
		}
		it.bar.SetCurrent(int64(s.Current))
		if it.board.opts.Layers {
			it.drawLayers(s.Layers)
		}
		return
	}
	// Past the pull: the bar stays full while the step is told.
	it.bar.SetTotal(1, false)
	it.bar.SetCurrent(1)
	it.endLayers()
}

// drawLayers adds or updates a bar per layer under the item.
func (it *ttyItem) drawLayers(layers []Layer) {
	if it.layers == nil {
		it.layers = map[string]*layerBar{}
	}
	for _, l := range layers {
		lb, ok := it.layers[l.ID]
		if !ok {
			if it.order >= layerBars {
				continue
			}
			it.board.mu.Lock()
			closed := it.board.closed
			it.board.mu.Unlock()
			if closed {
				return
			}
			id := l.ID
			if len(id) > 12 {
				id = id[:12]
			}
			lb = &layerBar{}
			it.order++
			lb.bar = it.board.p.New(0, mpb.BarStyle(), mpb.BarWidth(barWidth), mpb.BarPriority(it.prio+it.order), mpb.BarNoPop(), mpb.BarRemoveOnComplete(),
				mpb.PrependDecorators(decor.Any(func(decor.Statistics) string { return "  " + id }, decor.WCSyncSpaceR)),
				mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
					it.smu.Lock()
					defer it.smu.Unlock()
					return lb.status
				})),
			)
			it.layers[l.ID] = lb
		}
		status := l.Status
		if status == "" {
			status = "waiting"
		}
		if l.Total > 0 {
			lb.bar.SetTotal(int64(l.Total), false)
			lb.bar.SetCurrent(int64(l.Current))
			status = fmt.Sprintf("%s %s / %s", status, Bytes(l.Current), Bytes(l.Total))
		} else if isLayerDone(l.Status) {
			lb.bar.SetTotal(1, false)
			lb.bar.SetCurrent(1)
		}
		it.smu.Lock()
		lb.status = status
		it.smu.Unlock()
	}
}

func (it *ttyItem) endLayers() {
	for id, lb := range it.layers {
		lb.bar.Abort(true)
		delete(it.layers, id)
	}
}

func (it *ttyItem) Done(o Outcome, text string) {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.done {
		return
	}
	it.done = true
	it.endLayers()
	mark := markOK
	switch o {
	case Failed:
		mark = markFailed
	case Neutral:
		mark = markNeutral
	}
	it.board.dmu.Lock()
	wide := it.board.nameWide
	it.board.dmu.Unlock()
	it.board.Println(fmt.Sprintf("%s %-*s  %s", mark, wide, it.name, strings.TrimSpace(text)))
	if it.bar != nil {
		it.bar.Abort(true)
	}
}

func (it *ttyItem) Remove() {
	it.remove()
}

func (it *ttyItem) remove() {
	it.mu.Lock()
	defer it.mu.Unlock()
	if it.done {
		return
	}
	it.done = true
	it.endLayers()
	if it.bar != nil {
		it.bar.Abort(true)
	}
}
