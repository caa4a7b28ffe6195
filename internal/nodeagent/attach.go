package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	remotecommandserver "k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/microvm-dev/sandbox-operator/internal/access"
)

// Attach streams the main process's output as it is printed, from the
// moment of attaching (its earlier output is in the log), until the VM
// exits. The main process has no stdin and no terminal (it is not started
// on one), so attach is output-only, as `kubectl attach` to a container
// without stdin is; a request for stdin or a tty is refused with a message
// saying so, before any stream is opened.

// attachQueue bounds the output chunks buffered for one attached client.
// The guest connection's reader hands output over and must never wait for
// a client: a client that falls this far behind is cut off, told why.
const attachQueue = 256

// attacher is one client's subscription to the main process's output.
type attacher struct {
	ch      chan outputChunk
	dropped chan struct{} // closed when the client fell behind
	once    sync.Once
}

type outputChunk struct {
	stderr bool
	data   []byte
}

// onMainOutput receives the main process's output from the guest: it goes
// to the log and to every attached client.
func (h *vmHandle) onMainOutput(stderr bool, data []byte) {
	if h.output != nil {
		h.output(stderr, data)
	}
	h.attachMu.Lock()
	defer h.attachMu.Unlock()
	for a := range h.attachers {
		select {
		case a.ch <- outputChunk{stderr: stderr, data: append([]byte(nil), data...)}:
		default:
			a.once.Do(func() { close(a.dropped) })
			delete(h.attachers, a)
		}
	}
}

func (h *vmHandle) subscribe() (*attacher, func()) {
	a := &attacher{ch: make(chan outputChunk, attachQueue), dropped: make(chan struct{})}
	h.attachMu.Lock()
	if h.attachers == nil {
		h.attachers = map[*attacher]struct{}{}
	}
	h.attachers[a] = struct{}{}
	h.attachMu.Unlock()
	return a, func() {
		h.attachMu.Lock()
		delete(h.attachers, a)
		h.attachMu.Unlock()
	}
}

// serveAttach answers an attach request (the kubelet's streaming protocols).
func serveAttach(w http.ResponseWriter, req *http.Request, h *vmHandle, uid string) {
	opts, err := remotecommandserver.NewOptions(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if opts.Stdin || opts.TTY {
		http.Error(w, access.ErrAttachInput.Error(), http.StatusBadRequest)
		return
	}
	remotecommandserver.ServeAttach(w, req, mainAttacher{h: h}, h.key.Name, uid, "", opts,
		execIdleTimeout, remotecommandserver.DefaultStreamCreationTimeout, remotecommandserver.SupportedStreamingProtocols)
}

// mainAttacher attaches clients to a VM's main process.
type mainAttacher struct{ h *vmHandle }

// AttachContainer implements remotecommandserver.Attacher: it copies the
// main process's output to out and errw until the VM exits (the main
// process's non-zero exit code is the stream's exit code) or the client
// goes away.
func (m mainAttacher) AttachContainer(ctx context.Context, _, _, _ string, in io.Reader, out, errw io.WriteCloser,
	tty bool, _ <-chan remotecommandserver.TerminalSize) error {
	if in != nil || tty {
		return access.ErrAttachInput
	}
	a, cancel := m.h.subscribe()
	defer cancel()
	write := func(c outputChunk) error {
		dst := out
		if c.stderr {
			dst = errw
		}
		if dst == nil {
			return nil
		}
		_, err := dst.Write(c.data)
		return err
	}
	for {
		select {
		case c := <-a.ch:
			if write(c) != nil {
				return nil // the client is gone
			}
		case <-a.dropped:
			return errors.New("the attached client fell behind the main process's output; attach again (the log has all of it)")
		case <-m.h.vm.Done():
			// Output that arrived before the exit may still be queued.
			for len(a.ch) > 0 {
				if write(<-a.ch) != nil {
					return nil
				}
			}
			return m.h.mainExitError()
		case <-ctx.Done():
			return nil
		}
	}
}

// mainExitError is the main process's end as an exec-style exit error: nil
// for exit code 0 or when the guest did not report the end.
func (h *vmHandle) mainExitError() error {
	h.mu.Lock()
	ex := h.mainExit
	h.mu.Unlock()
	if ex == nil {
		return nil
	}
	if code := mainExitCode(*ex); code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("the main process ended with exit code %d", code), Code: int(code)}
	}
	return nil
}
