package progress

import (
	"fmt"
	"sync"
	"time"
)

// plain prints lines: every state change of an item, its first progress
// line at once and then at most one a second (the latest, when the second
// is up), and its result.
type plain struct {
	opts Options

	mu        sync.Mutex
	items     []*plainItem
	nameWidth int
	closed    bool
	stop      chan struct{}
	done      chan struct{}
}

func newPlain(opts Options) *plain {
	p := &plain{opts: opts, nameWidth: 8, stop: make(chan struct{}), done: make(chan struct{})}
	go p.flushLoop()
	return p
}

func (p *plain) println(line string) {
	fmt.Fprintln(p.opts.Out, line)
}

func (p *plain) Println(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.println(line)
}

func (p *plain) Overall(string, Counts) {}

func (p *plain) Item(key, name string) Item {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nameWidth = max(p.nameWidth, len(name))
	it := &plainItem{board: p, name: name}
	p.items = append(p.items, it)
	return it
}

func (p *plain) Close(final string) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stop)
	p.mu.Unlock()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if final != "" {
		p.println(final)
	}
}

// flushLoop prints each item's held progress line once its second is up.
func (p *plain) flushLoop() {
	defer close(p.done)
	tick := time.NewTicker(p.opts.Interval / 4)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-tick.C:
			p.mu.Lock()
			for _, it := range p.items {
				if it.held != "" && !it.done && now.Sub(it.lastAt) >= p.opts.Interval {
					it.emit(it.held, now)
				}
			}
			p.mu.Unlock()
		}
	}
}

type plainItem struct {
	board *plain
	name  string

	// guarded by board.mu
	state    string
	lastLine string    // the last progress line printed
	lastAt   time.Time // when it was printed
	held     string    // a progress line waiting for its second
	done     bool
}

func (it *plainItem) line(text string) string {
	return fmt.Sprintf("%-*s  %s", it.board.nameWidth, it.name, text)
}

func (it *plainItem) emit(line string, now time.Time) {
	it.board.println(line)
	it.lastLine, it.lastAt, it.held = line, now, ""
}

func (it *plainItem) State(text string) {
	b := it.board
	b.mu.Lock()
	defer b.mu.Unlock()
	if it.done || b.closed || text == it.state {
		return
	}
	it.state = text
	b.println(it.line(text))
}

func (it *plainItem) Progress(s Step) {
	b := it.board
	b.mu.Lock()
	defer b.mu.Unlock()
	if it.done || b.closed {
		return
	}
	line := it.line(StepText(s))
	if line == it.lastLine {
		it.held = ""
		return
	}
	now := time.Now()
	if it.lastAt.IsZero() || now.Sub(it.lastAt) >= b.opts.Interval {
		it.emit(line, now)
		return
	}
	it.held = line
}

func (it *plainItem) Done(_ Outcome, text string) {
	b := it.board
	b.mu.Lock()
	defer b.mu.Unlock()
	if it.done {
		return
	}
	it.done, it.held = true, ""
	b.println(it.line(text))
}

func (it *plainItem) Remove() {
	b := it.board
	b.mu.Lock()
	defer b.mu.Unlock()
	it.done, it.held = true, ""
}
