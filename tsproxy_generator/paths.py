"""Where things live on an installed system: one list shared by the generator, the
runtime and the unit templates (units/ are rendered with these names at package build)."""

CONF_DIR = "/etc/tsproxy.d"
# The units' directory on every Debian from 12 on (all merged-/usr): a Debian 12 build installs
# them under /lib/systemd/system, the same directory by another name.
UNIT_DIR = "/usr/lib/systemd/system"
TSPROXY = "/usr/sbin/tsproxy"
TAILSCALED = "/usr/sbin/tailscaled"
TAILSCALE = "/usr/bin/tailscale"
STATE_DIR = "/var/lib/tsproxy"  # + /NAME: tailscaled's --statedir
RUN_DIR = "/run/tsproxy"  # + /NAME/tailscaled.sock (tsproxy.instances.tailscaled_socket)
NETNS_ETC_DIR = "/etc/netns"  # + /ts-NAME/resolv.conf, iproute2's per-namespace /etc
