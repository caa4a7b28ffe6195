package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Accel is the accelerator a VM runs under.
type Accel string

const (
	// AccelKVM runs the guest on the host's CPU (needs /dev/kvm).
	AccelKVM Accel = "kvm"
	// AccelTCG emulates the CPU: slow, but runs anywhere.
	AccelTCG Accel = "tcg"
)

// DefaultAgentPort is the name of the agent's virtio-serial port.
const DefaultAgentPort = "agent0"

// File names inside Config.RunDir.
const (
	ConsoleLogFile  = "console.log"
	MonitorLogFile  = "vmm.log"
	QMPSocketFile   = "qmp.sock"
	AgentSocketFile = "agent.sock"
	ProcessFile     = "process.json"
	// NetSocketFile is the NIC's socket (Config.Network): QEMU listens,
	// the host's network stack connects.
	NetSocketFile = "net.sock"
)

// Config describes one microVM.
type Config struct {
	// Kernel is the guest kernel: an uncompressed vmlinux with a PVH note.
	Kernel string
	// Initrd is the initramfs (uncompressed newc cpio).
	Initrd string
	// KernelArgs are appended to the kernel command line the VMM builds.
	KernelArgs []string
	// CPUs is the number of vCPUs; 0 means 1.
	CPUs int
	// MemoryMiB is the guest RAM in MiB; 0 means 128.
	MemoryMiB int
	// Accel is the accelerator; "" means AccelKVM.
	Accel Accel
	// TSCkHz is the host TSC rate, passed as tsc_early_khz under TCG
	// (required there: without it ~1 boot in 10 hangs in timer calibration
	// on microvm, which has neither HPET nor PM timer to fall back on).
	TSCkHz int
	// RunDir holds the VM's sockets, console log and process record. Unix
	// socket paths are limited to 107 bytes, so keep it short.
	RunDir string
	// AgentPort names the agent's virtio-serial port; "" means
	// DefaultAgentPort.
	AgentPort string
	// RootDisk, if set, is a raw disk image attached read-only as a
	// virtio-blk device with serial RootDiskSerial. The guest finds its
	// disks by serial (/sys/block/vd*/serial): microvm's virtio-mmio slots do
	// not follow the command line's order.
	RootDisk string
	// Disks are further raw disk images, attached after RootDisk.
	Disks []Disk
	// Binary is the VMM executable; "" means the implementation's default.
	Binary string
	// CgroupParent, if set, is a cgroup v2 directory under which each VM's
	// monitor gets its own cgroup (named after RunDir's base name), with
	// CPU and memory limits from CPUs and MemoryMiB where the parent
	// delegates those controllers.
	CgroupParent string
	// Network, if set, gives the guest a NIC; nil means none at all (the
	// guest has only lo).
	Network *NetworkDevice
}

// NetworkDevice is the guest's virtio-net NIC. Its other end is a unix
// stream socket (Paths.Net) on which QEMU listens and a userspace network
// stack on the host connects (VM.DialNet); every Ethernet frame (no FCS,
// no virtio-net header) crosses it behind a 4-byte big-endian length.
//
// QEMU is the server, as for the agent socket, because QEMU 7.2's stream
// netdev never reconnects: a restarted node agent dials again. Frames the
// guest sends while nobody is connected are lost.
type NetworkDevice struct {
	// MAC is the NIC's unicast MAC address (e.g. 52:54:00:12:34:56); the
	// guest finds the NIC by it.
	MAC string `json:"mac"`
}

// RootDiskSerial is the virtio-blk serial of Config.RootDisk.
const RootDiskSerial = "root"

// Disk is a raw disk image attached as a virtio-blk device.
type Disk struct {
	// Path is the image file.
	Path string
	// Serial names the disk to the guest (at most 20 bytes, virtio-blk's
	// limit; letters, digits, '-' and '_').
	Serial string
	// ReadOnly attaches it read-only.
	ReadOnly bool
}

// Paths are the files of a VM in its RunDir.
type Paths struct {
	Console, MonitorLog, QMP, Agent, Process string
	// Net is the NIC's socket; it exists only for a VM with a
	// Config.Network.
	Net string
}

// PathsIn returns the paths of the VM files in runDir.
func PathsIn(runDir string) Paths {
	return Paths{
		Console:    filepath.Join(runDir, ConsoleLogFile),
		MonitorLog: filepath.Join(runDir, MonitorLogFile),
		QMP:        filepath.Join(runDir, QMPSocketFile),
		Agent:      filepath.Join(runDir, AgentSocketFile),
		Process:    filepath.Join(runDir, ProcessFile),
		Net:        filepath.Join(runDir, NetSocketFile),
	}
}

func (c Config) withDefaults() Config {
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 128
	}
	if c.Accel == "" {
		c.Accel = AccelKVM
	}
	if c.AgentPort == "" {
		c.AgentPort = DefaultAgentPort
	}
	return c
}

// maxSocketPath is sun_path's capacity on Linux, less the NUL.
const maxSocketPath = 107

func (c Config) validate() error {
	var errs []error
	if c.Kernel == "" {
		errs = append(errs, errors.New("kernel is required"))
	}
	if c.Initrd == "" {
		errs = append(errs, errors.New("initrd is required"))
	}
	if c.RunDir == "" {
		errs = append(errs, errors.New("run dir is required"))
	} else if p := PathsIn(c.RunDir); len(p.Agent) > maxSocketPath || len(p.QMP) > maxSocketPath || len(p.Net) > maxSocketPath {
		errs = append(errs, fmt.Errorf("run dir %s is too long for unix socket paths", c.RunDir))
	}
	if c.Network != nil {
		if err := validMAC(c.Network.MAC); err != nil {
			errs = append(errs, fmt.Errorf("network: %w", err))
		}
	}
	seen := map[string]bool{RootDiskSerial: c.RootDisk != ""}
	for _, d := range c.Disks {
		if d.Path == "" || !validSerial(d.Serial) || seen[d.Serial] {
			errs = append(errs, fmt.Errorf("disk %q: needs a path and a unique serial of 1-20 letters, digits, '-' or '_'", d.Serial))
		}
		seen[d.Serial] = true
	}
	if c.CPUs < 1 || c.MemoryMiB < 16 {
		errs = append(errs, fmt.Errorf("need at least 1 CPU and 16 MiB, got %d and %d", c.CPUs, c.MemoryMiB))
	}
	switch c.Accel {
	case AccelKVM:
	case AccelTCG:
		if c.TSCkHz <= 0 {
			errs = append(errs, errors.New("TSCkHz is required under TCG (see HostTSCkHz)"))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown accelerator %q", c.Accel))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid VM config: %w", err)
	}
	return nil
}

// validMAC accepts a unicast MAC-48 address in the colon form QEMU takes.
func validMAC(s string) error {
	mac, err := net.ParseMAC(s)
	switch {
	case err != nil || len(mac) != 6 || strings.Count(s, ":") != 5:
		return fmt.Errorf("MAC %q: want six colon-separated hex bytes", s)
	case mac[0]&1 != 0:
		return fmt.Errorf("MAC %q is a multicast address", s)
	}
	return nil
}

func validSerial(s string) bool {
	if len(s) == 0 || len(s) > 20 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
		default:
			return false
		}
	}
	return true
}

// VMM starts virtual machines.
type VMM interface {
	// Start starts a VM for cfg and returns once the monitor process runs;
	// the guest boots in the background. The monitor runs in its own
	// session and outlives the caller.
	Start(ctx context.Context, cfg Config) (VM, error)
	// Adopt takes over a VM that an earlier process started in runDir,
	// identified by its process record (pid and start time). It fails with
	// ErrProcessGone when that process no longer runs.
	Adopt(runDir string) (VM, error)
}

// VM is a running virtual machine.
type VM interface {
	// Process identifies the monitor process (recorded in RunDir).
	Process() Process
	// Paths are the VM's files.
	Paths() Paths
	// DialAgent connects to the guest's agent channel (the monitor is the
	// server; one connection at a time). It retries until the monitor
	// listens, ctx ends or the VM exits. The connection carries protocol
	// frames once the guest opens its port; a new connection after an
	// earlier one closed is how a restarted node agent reaches the guest.
	DialAgent(ctx context.Context) (net.Conn, error)
	// DialNet connects to the NIC's socket (Paths.Net) as DialAgent does
	// to the agent's: QEMU listens, one connection at a time, and a new
	// connection after an earlier one closed is how a restarted node
	// agent's network stack reaches the guest again. It fails with
	// ErrNoNetwork for a VM without a NIC.
	DialNet(ctx context.Context) (net.Conn, error)
	// Done is closed when the monitor process has exited.
	Done() <-chan struct{}
	// ExitErr is the monitor's exit status (nil for a clean exit); valid
	// after Done. For an adopted VM, whose exit status only its parent could
	// read, it is ErrExitUnknown.
	ExitErr() error
	// PowerDown asks the guest to shut down (the ACPI power button).
	PowerDown(ctx context.Context) error
	// Kill stops the monitor at once (QMP quit, then SIGKILL) and waits
	// for it to exit.
	Kill(ctx context.Context) error
	// Close releases what the host holds for the VM; it does not stop it.
	Close() error
}

// ErrNoNetwork is DialNet's error for a VM started without a
// Config.Network.
var ErrNoNetwork = errors.New("vmm: the VM has no network device")

// ErrExitUnknown is an adopted VM's ExitErr: the monitor was not this
// process's child, so its exit status is not known.
var ErrExitUnknown = errors.New("vmm: exit status unknown (the VM was adopted)")

// ensureRunDir creates runDir and removes sockets a previous VM left there
// (binding to an existing path fails).
func ensureRunDir(p Paths, runDir string) error {
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return err
	}
	for _, s := range []string{p.Agent, p.QMP, p.Net} {
		if err := os.Remove(s); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}
