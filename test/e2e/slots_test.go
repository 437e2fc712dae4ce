package e2e

import (
	"testing"
	"time"
)

// TestSlots checks the QEMU semaphore of QemuParallel: guests up to the
// number of slots run at once, a waiter for more than one slot is served
// in its turn (not overtaken by later single-slot waiters), and a want of
// more slots than there are takes them all.
func TestSlots(t *testing.T) {
	var s slots
	got := make(chan string, 10)
	take := func(name string, want int, hold chan struct{}) {
		n, _ := s.acquire(2, want)
		got <- name
		<-hold
		s.release(n)
	}
	next := func() string {
		select {
		case name := <-got:
			return name
		case <-time.After(5 * time.Second):
			return "(none within 5 s)"
		}
	}
	quiet := func(what string) {
		select {
		case name := <-got:
			t.Fatalf("%s: %s took slots", what, name)
		case <-time.After(200 * time.Millisecond):
		}
	}
	holdA, holdB, holdPair, holdC, holdBig := make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})
	go take("a", 1, holdA)
	go take("b", 1, holdB)
	first, second := next(), next()
	if !(first == "a" && second == "b" || first == "b" && second == "a") {
		t.Fatalf("two single-slot guests on two slots: %s, %s", first, second)
	}
	go take("pair", 2, holdPair)
	waitQueued(t, &s, 1) // the pair is in line before c
	go take("c", 1, holdC)
	quiet("both slots held")
	close(holdA)
	quiet("one slot free, the pair waits first in line") // c must not overtake the pair
	close(holdB)
	if name := next(); name != "pair" {
		t.Fatalf("after both releases %s took slots, want the pair", name)
	}
	quiet("the pair holds both slots")
	close(holdPair)
	if name := next(); name != "c" {
		t.Fatalf("after the pair %s took slots, want c", name)
	}
	close(holdC)
	go take("big", 5, holdBig) // more than there are: all of them
	if name := next(); name != "big" {
		t.Fatalf("a want of 5 of 2 slots: %s", name)
	}
	s.mu.Lock()
	free, size := s.free, s.size
	s.mu.Unlock()
	if free != 0 || size != 2 {
		t.Errorf("a want of 5 of 2 slots left %d free of %d", free, size)
	}
	close(holdBig)
}

// waitQueued waits until n acquirers wait in s's line.
func waitQueued(t *testing.T, s *slots, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		q := len(s.queue)
		s.mu.Unlock()
		if q == n {
			return
		}
	}
	t.Fatalf("%d waiters did not queue within 5 s", n)
}
