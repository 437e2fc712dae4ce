package iso

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// Server serves the files of images read-only over HTTP on the loopback
// interface, under a random path (a capability: other local users cannot
// guess it), for dnf to read as it reads a network repository.
type Server struct {
	// URL is the base URL, ending in "/"; the image i is under URL + "i/".
	URL string

	srv    *http.Server
	images []*Image
	done   chan struct{}

	mu       sync.Mutex
	problems []string
}

// Serve starts serving images on 127.0.0.1 (a port the kernel picks) until
// Close.
func Serve(images []*Image) (*Server, error) {
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, fmt.Errorf("cannot make the image server's token: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("cannot serve the image to dnf: %w", err)
	}
	prefix := "/" + hex.EncodeToString(tok) + "/"
	s := &Server{URL: "http://" + ln.Addr().String() + prefix, images: images, done: make(chan struct{})}
	s.srv = &http.Server{
		Handler:           http.StripPrefix(prefix, http.HandlerFunc(s.handle)),
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln)
	}()
	return s, nil
}

// RepoURL returns the base URL of repository dir of image i.
func (s *Server) RepoURL(i int, dir string) string {
	u := fmt.Sprintf("%s%d/", s.URL, i)
	if dir != "." {
		u += strings.Trim(dir, "/") + "/"
	}
	return u
}

// Problems returns what the server refused to serve because it cannot be
// read correctly (a file over 4 GiB, a damaged record), one line each.
func (s *Server) Problems() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.problems...)
}

// Close stops the server and waits for it; idempotent.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "read-only", http.StatusMethodNotAllowed)
		return
	}
	idx, name, ok := strings.Cut(r.URL.Path, "/")
	var im *Image
	for i, x := range s.images {
		if ok && idx == fmt.Sprint(i) {
			im = x
		}
	}
	name = path.Clean(name)
	if im == nil || !fs.ValidPath(name) {
		http.NotFound(w, r)
		return
	}
	f, _, err := im.OpenFile(name)
	if err != nil {
		if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrDamaged) {
			s.mu.Lock()
			s.problems = append(s.problems, fmt.Sprintf("%s: %v", im.path, err))
			s.mu.Unlock()
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, path.Base(name), time.Time{}, f)
}
