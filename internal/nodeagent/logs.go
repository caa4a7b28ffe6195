package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/microvm-dev/sandbox-operator/internal/sandboxlog"
)

// logsDir is the sandbox's output log directory in its directory: it
// outlives runs (logs stay readable after a stop) and agent restarts (the
// restarted agent appends), and goes with the Sandbox.
const logsDir = "logs"

// attachLog opens the sandbox's log for h and routes the main process's
// output into it, with a system record saying what happened.
func (r *SandboxReconciler) attachLog(ctx context.Context, h *vmHandle, marker string) {
	w, err := sandboxlog.Open(filepath.Join(h.runDir, logsDir), sandboxlog.Options{})
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Failed to open the sandbox's log; its output is not kept")
		return
	}
	_ = w.Write(sandboxlog.SourceSystem, 0, []byte(marker+"\n"))
	h.log = w
	h.output = func(stderr bool, data []byte) {
		src := sandboxlog.SourceStdout
		if stderr {
			src = sandboxlog.SourceStderr
		}
		_ = w.Write(src, 0, data)
	}
}

// serveLog streams a sandbox's log with kubectl logs' options:
// follow=true, tailLines=N, sinceSeconds=N or sinceTime=RFC3339,
// timestamps=true; the output is the raw bytes of stdout and stderr
// (with timestamps: each line prefixed with its record's time).
func serveLog(w http.ResponseWriter, req *http.Request, dir string) {
	q := req.URL.Query()
	opts := sandboxlog.ReadOptions{Follow: q.Get("follow") == "true"}
	if v := q.Get("tailLines"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest("tailLines must be an integer"))
			return
		}
		opts.Tail = &n
	}
	if v := q.Get("sinceSeconds"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeStatus(w, apierrors.NewBadRequest("sinceSeconds must be a non-negative integer"))
			return
		}
		opts.Since = time.Now().Add(-time.Duration(n) * time.Second)
	}
	if v := q.Get("sinceTime"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest("sinceTime must be RFC 3339"))
			return
		}
		opts.Since = t
	}
	if q.Get("source") == "all" {
		opts.Sources = sandboxlog.AllSources
	}
	timestamps := q.Get("timestamps") == "true"
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	rc := http.NewResponseController(w)
	bw := bufio.NewWriter(w)
	atLineStart := true
	err := sandboxlog.Read(req.Context(), filepath.Join(dir, logsDir), opts, func(rec sandboxlog.Record) error {
		data := rec.Data
		if timestamps {
			var b bytes.Buffer
			for len(data) > 0 {
				if atLineStart {
					b.WriteString(rec.Time.UTC().Format(time.RFC3339Nano) + " ")
				}
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					b.Write(data)
					atLineStart = false
					break
				}
				b.Write(data[:i+1])
				data = data[i+1:]
				atLineStart = true
			}
			data = b.Bytes()
		}
		if _, err := bw.Write(data); err != nil {
			return err
		}
		if opts.Follow {
			if err := bw.Flush(); err != nil {
				return err
			}
			_ = rc.Flush()
		}
		return nil
	})
	_ = bw.Flush()
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) && req.Context().Err() == nil {
		// Headers may be out already; say it in the body.
		_, _ = w.Write([]byte("\nerror reading the log: " + err.Error() + "\n"))
	}
}
