package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// QMP is a minimal client of QEMU's machine protocol: JSON objects, one a
// line, over a unix socket. Commands run one at a time; asynchronous
// events between them are skipped.
type QMP struct {
	conn net.Conn
	rd   *bufio.Reader
	mu   sync.Mutex
}

// QMPError is an error QEMU answered a command with.
type QMPError struct {
	Class, Desc string
}

func (e *QMPError) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

// DialQMP connects to the QMP socket at path, reads the greeting and
// enters command mode (qmp_capabilities).
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &QMP{conn: conn, rd: bufio.NewReader(conn)}
	stop := q.deadline(ctx)
	defer stop()
	var greeting struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	if err := q.readLine(&greeting); err != nil || greeting.QMP == nil {
		_ = conn.Close()
		return nil, fmt.Errorf("qmp: no greeting: %w", err)
	}
	if err := q.execute("qmp_capabilities", nil, nil); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return q, nil
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// Execute runs command with arguments (nil for none) and decodes its
// "return" value into out (nil to discard it).
func (q *QMP) Execute(ctx context.Context, command string, arguments, out any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	stop := q.deadline(ctx)
	defer stop()
	return q.execute(command, arguments, out)
}

// Status is the answer to query-status.
type Status struct {
	// Status is the run state: "running", "paused", "shutdown", ...
	Status string `json:"status"`
	// Running is true while the vCPUs run.
	Running bool `json:"running"`
}

// QueryStatus returns the VM's run state.
func (q *QMP) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := q.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// SystemPowerdown presses the ACPI power button; the guest decides what
// happens next.
func (q *QMP) SystemPowerdown(ctx context.Context) error {
	return q.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit ends QEMU at once. QEMU may close the socket before its answer
// arrives; that counts as success.
func (q *QMP) Quit(ctx context.Context) error {
	err := q.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// deadline applies ctx's deadline to the connection, and closes the
// connection's pending I/O when ctx is cancelled first.
func (q *QMP) deadline(ctx context.Context) (stop func()) {
	if d, ok := ctx.Deadline(); ok {
		_ = q.conn.SetDeadline(d)
	} else {
		_ = q.conn.SetDeadline(time.Time{})
	}
	unhook := context.AfterFunc(ctx, func() { _ = q.conn.SetDeadline(time.Unix(1, 0)) })
	return func() { unhook() }
}

func (q *QMP) execute(command string, arguments, out any) error {
	req := map[string]any{"execute": command}
	if arguments != nil {
		req["arguments"] = arguments
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp: sending %s: %w", command, err)
	}
	for {
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *QMPError       `json:"error"`
			Event  string          `json:"event"`
		}
		if err := q.readLine(&resp); err != nil {
			return fmt.Errorf("qmp: waiting for the answer to %s: %w", command, err)
		}
		switch {
		case resp.Event != "":
			continue // asynchronous; nobody subscribes yet
		case resp.Error != nil:
			return resp.Error
		case out != nil:
			if err := json.Unmarshal(resp.Return, out); err != nil {
				return fmt.Errorf("qmp: decoding the answer to %s: %w", command, err)
			}
		}
		return nil
	}
}

func (q *QMP) readLine(v any) error {
	line, err := q.rd.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}
