package hostconn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// errCanceled is the message of the TypeError the host sends on a file
// stream it gives up on (its ctx ended, its download writer failed), so
// that the guest stops sending or waiting for data.
const errCanceled = "canceled by the host"

// fileSession is one file operation's stream.
type fileSession struct {
	data *buffer // TypeData frames of a read or tar
	// result is closed when the guest's answer (or the connection's end)
	// arrived.
	result chan struct{}

	mu  sync.Mutex
	res protocol.FileResult
	err error // the connection's end, or an undecodable answer
}

func (s *fileSession) receive(f protocol.Frame) bool {
	switch f.Type {
	case protocol.TypeData:
		s.data.put(f.Payload)
		if f.Flags&protocol.FlagEnd != 0 {
			s.data.end(io.EOF)
		}
		return false
	case protocol.TypeFileResult:
		var res protocol.FileResult
		err := protocol.Decode(f, &res)
		s.finish(res, err)
		return true
	case protocol.TypeError:
		// Not in the file protocol (a failure is a FileResult), but an
		// error is an error.
		var e protocol.Error
		err := protocol.Decode(f, &e)
		s.finish(protocol.FileResult{Error: &e}, err)
		return true
	}
	return false
}

func (s *fileSession) fail(err error) { s.finish(protocol.FileResult{}, err) }

func (s *fileSession) bind(uint32) {}

// finish records the answer once.
func (s *fileSession) finish(res protocol.FileResult, err error) {
	if err != nil {
		s.data.end(err)
	} else {
		s.data.end(io.EOF)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.result:
	default:
		s.res, s.err = res, err
		close(s.result)
	}
}

func (s *fileSession) answered() bool {
	select {
	case <-s.result:
		return true
	default:
		return false
	}
}

// File runs a file operation. For protocol.FileWrite and
// protocol.FileUntar it streams upload (nil: nothing) as TypeData frames;
// for protocol.FileRead and protocol.FileTar it copies the guest's data
// into download (nil: discarded). It returns the guest's FileResult; when
// that reports a failure, the error is its *GuestError.
//
// When ctx ends or download fails first, File sends a TypeError on the
// stream (so that the guest stops) and returns that error; the rest of the
// stream is dropped. A write cut short this way is not committed by the
// guest as a complete one (no FlagEnd was sent).
func (c *Conn) File(ctx context.Context, req protocol.FileRequest, upload io.Reader, download io.Writer) (protocol.FileResult, error) {
	wrap := func(err error) error { return fmt.Errorf("file %s %s: %w", req.Op, req.Path, err) }
	if err := ctx.Err(); err != nil {
		return protocol.FileResult{}, wrap(err)
	}
	s := &fileSession{data: newBuffer(c.opts.StreamBuffer), result: make(chan struct{})}
	id, err := c.open(s)
	if err != nil {
		return protocol.FileResult{}, wrap(err)
	}
	abort := func(cause error) (protocol.FileResult, error) {
		c.forget(id)
		s.data.discard()
		if !s.answered() && !errors.Is(cause, ErrClosed) {
			_ = c.writeMsg(id, protocol.TypeError, protocol.Error{Message: errCanceled})
		}
		return protocol.FileResult{}, wrap(cause)
	}
	if err := c.writeMsg(id, protocol.TypeFile, req); err != nil {
		c.forget(id)
		return protocol.FileResult{}, wrap(err)
	}
	// Wake a copy waiting for data when ctx ends.
	stop := context.AfterFunc(ctx, s.data.discard)
	defer stop()

	switch req.Op {
	case protocol.FileWrite, protocol.FileUntar:
		if err := c.upload(ctx, id, s, upload); err != nil {
			return abort(err)
		}
	case protocol.FileRead, protocol.FileTar:
		if download == nil {
			download = io.Discard
		}
		if _, err := s.data.WriteTo(download); err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return abort(err)
		}
	}
	if !s.answered() { // an answer that arrived wins over ctx
		select {
		case <-s.result:
		case <-ctx.Done():
			return abort(ctx.Err())
		}
	}
	s.mu.Lock()
	res, err := s.res, s.err
	s.mu.Unlock()
	if err != nil {
		return res, wrap(err)
	}
	if res.Error != nil {
		return res, wrap(guestError(*res.Error))
	}
	return res, nil
}

// upload streams r on stream id, FlagEnd last, unless the guest answered
// (it failed), the connection ended or ctx ended first.
//
// r is read on its own goroutine, so that a Read that blocks (an upload
// fed by a client that went quiet) cannot keep File from returning when
// the connection or ctx ends: that goroutine then ends with the Read, and
// never reads again.
func (c *Conn) upload(ctx context.Context, id uint32, s *fileSession, r io.Reader) error {
	if r != nil {
		chunks := make(chan []byte)
		var readErr error // set before chunks is closed
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			defer close(chunks)
			// Two buffers: one is read into while the other is written (the
			// channel is unbuffered, so a buffer is free again once the next
			// receive happened).
			bufs := [2][]byte{make([]byte, chunkSize), make([]byte, chunkSize)}
			for i := 0; ; i ^= 1 {
				n, err := r.Read(bufs[i])
				if n > 0 {
					select {
					case chunks <- bufs[i][:n]:
					case <-stop:
						return
					}
				}
				if err != nil {
					if !errors.Is(err, io.EOF) {
						readErr = fmt.Errorf("reading the upload: %w", err)
					}
					return
				}
			}
		}()
	loop:
		for {
			select {
			case p, ok := <-chunks:
				if !ok {
					if readErr != nil {
						return readErr
					}
					break loop
				}
				if err := c.write(protocol.Frame{Stream: id, Type: protocol.TypeData, Payload: p}); err != nil {
					return err
				}
			case <-s.result:
				return nil // it failed (or the connection ended): File returns its answer
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if s.answered() {
		return nil
	}
	return c.write(protocol.Frame{Stream: id, Type: protocol.TypeData, Flags: protocol.FlagEnd})
}

// ReadFile returns the content of the file path.
func (c *Conn) ReadFile(ctx context.Context, path string) ([]byte, error) {
	var b bytes.Buffer
	_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileRead, Path: path}, nil, &b)
	return b.Bytes(), err
}

// WriteFile writes data to the file path (created with mode, 0: 0644, or
// truncated).
func (c *Conn) WriteFile(ctx context.Context, path string, data []byte, mode uint32) error {
	_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileWrite, Path: path, Mode: mode}, bytes.NewReader(data), nil)
	return err
}

// List returns the entries of the directory path, sorted by name.
func (c *Conn) List(ctx context.Context, path string) ([]protocol.FileInfo, error) {
	res, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileList, Path: path}, nil, nil)
	return res.Entries, err
}

// Stat describes path, not following a final symlink.
func (c *Conn) Stat(ctx context.Context, path string) (protocol.FileInfo, error) {
	res, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileStat, Path: path}, nil, nil)
	if err != nil {
		return protocol.FileInfo{}, err
	}
	if res.Stat == nil {
		return protocol.FileInfo{}, fmt.Errorf("file stat %s: the guest's answer has no stat", path)
	}
	return *res.Stat, nil
}

// Mkdir makes the directory path (mode 0: 0755); recursive makes its
// parents too and accepts an existing directory.
func (c *Conn) Mkdir(ctx context.Context, path string, mode uint32, recursive bool) error {
	_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileMkdir, Path: path, Mode: mode, Recursive: recursive}, nil, nil)
	return err
}

// Remove removes path; a non-empty directory needs recursive.
func (c *Conn) Remove(ctx context.Context, path string, recursive bool) error {
	_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileRemove, Path: path, Recursive: recursive}, nil, nil)
	return err
}

// Copy copies path to dest; a directory tree needs recursive.
func (c *Conn) Copy(ctx context.Context, path, dest string, recursive bool) error {
	_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileCopy, Path: path, Dest: dest, Recursive: recursive}, nil, nil)
	return err
}

// Rename renames path to dest.
func (c *Conn) Rename(ctx context.Context, path, dest string) error {
	_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileRename, Path: path, Dest: dest}, nil, nil)
	return err
}

// Exists reports whether path exists.
func (c *Conn) Exists(ctx context.Context, path string) (bool, error) {
	res, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileExists, Path: path}, nil, nil)
	return res.Exists, err
}

// Tar writes a tar archive of path (a file or a directory tree, entries
// named relative to path's parent) to w.
func (c *Conn) Tar(ctx context.Context, path string, w io.Writer) error {
	_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileTar, Path: path}, nil, w)
	return err
}

// Untar extracts the tar archive r into the directory dir (created if
// needed).
func (c *Conn) Untar(ctx context.Context, dir string, r io.Reader) error {
	_, err := c.File(ctx, protocol.FileRequest{Op: protocol.FileUntar, Path: dir}, r, nil)
	return err
}
