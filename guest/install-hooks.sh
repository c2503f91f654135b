#!/bin/sh
# Installs blockrep's fsfreeze hooks in a Linux guest and turns on qemu-ga's fsfreeze hook (-F).
# Run as root inside the guest, from a copy of blockrep's guest/ folder:
#   sh install-hooks.sh [--dry-run]
# What it does:
#   /usr/local/lib/blockrep/fsfreeze-hook   blockrep's hook runner (RHEL family:
#     or /etc/qemu-ga/blockrep-fsfreeze-hook   beside the distribution's, SELinux-labelled): runs every script of the
#                                           distribution's fsfreeze-hook.d, and fails the freeze
#                                           when one fails (the runner QEMU 7.2 ships ignores them)
#   <hook.d>/mariadb, <hook.d>/postgresql   the database hooks (each does nothing when its
#                                           database is not installed or not running);
#                                           <hook.d> is /etc/qemu/fsfreeze-hook.d (Debian, Ubuntu)
#                                           or /etc/qemu-ga/fsfreeze-hook.d (RHEL family)
#   /etc/default/blockrep-fsfreeze          the hooks' settings, commented (kept when present)
#   qemu-ga -F<runner>                      Debian/Ubuntu with systemd: a drop-in for
#                                           qemu-guest-agent.service; without systemd:
#                                           DAEMON_ARGS in /etc/default/qemu-guest-agent;
#                                           RHEL family: FSFREEZE_HOOK_PATHNAME in /etc/sysconfig/qemu-ga
# Then it restarts qemu-guest-agent. Existing files of its own are replaced; others are kept.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
dry=0
[ "${1:-}" = --dry-run ] && dry=1
say() { echo "install-hooks: $*"; }
do_() { if [ $dry = 1 ]; then say "would run: $*"; else "$@"; fi; }

[ "$(id -u)" -eq 0 ] || { echo "install-hooks: run as root" >&2; exit 1; }
command -v qemu-ga >/dev/null 2>&1 || [ -x /usr/sbin/qemu-ga ] || [ -x /usr/bin/qemu-ga ] || {
  echo "install-hooks: qemu-ga is not installed (Debian/Ubuntu: apt install qemu-guest-agent; RHEL: dnf install qemu-guest-agent)" >&2
  exit 1
}

if [ -f /etc/sysconfig/qemu-ga ]; then
  family=rhel
  hookd=/etc/qemu-ga/fsfreeze-hook.d
  # Beside the distribution's hook, where SELinux lets qemu-ga run it (labelled below).
  runner=/etc/qemu-ga/blockrep-fsfreeze-hook
else
  family=debian
  hookd=/etc/qemu/fsfreeze-hook.d
  runner=/usr/local/lib/blockrep/fsfreeze-hook
fi
say "guest family: $family; hooks in $hookd"

do_ mkdir -p "${runner%/*}" "$hookd"
# The runner finds its scripts through FSFREEZE_HOOK_D, set in a wrapper so that qemu-ga's
# command line stays a plain path.
if [ $dry = 1 ]; then
  say "would write $runner (runs $hookd/*)"
else
  install -m 0755 "$here/fsfreeze-hook" "$runner.run"
  printf '#!/bin/sh\n# blockrep: qemu-ga -F runs this (guest/install-hooks.sh)\nFSFREEZE_HOOK_D=%s exec %s "$@"\n' "$hookd" "$runner.run" >"$runner.new"
  chmod 0755 "$runner.new"
  mv "$runner.new" "$runner"
fi
for h in "$here"/fsfreeze-hook.d/*; do
  do_ install -m 0755 "$h" "$hookd/${h##*/}"
done
if [ ! -e /etc/default/blockrep-fsfreeze ]; then
  if [ $dry = 1 ]; then say "would write /etc/default/blockrep-fsfreeze"; else
    mkdir -p /etc/default
    cat >/etc/default/blockrep-fsfreeze <<'CONF'
# Settings of blockrep's fsfreeze hooks (sourced by /bin/sh). See the head of each hook.
# MariaDB / MySQL
#MARIADB_HOOK=auto               # auto | on (fail the freeze when the lock cannot be had) | off
#MARIADB_LOCK_WAIT_TIMEOUT=10    # seconds FLUSH TABLES WITH READ LOCK may wait
#MARIADB_HOLD_TIMEOUT=60         # seconds the lock is held at most when thaw never comes
#MARIADB_DEFAULTS_FILE=/etc/mysql/debian.cnf   # option file with the credentials
# PostgreSQL
#PG_HOOK=auto                    # auto | on | off
#PG_OS_USER=postgres             # psql runs as this user (peer authentication)
#PGHOST=/var/run/postgresql
#PG_BACKUP_MODE=no               # yes: hold pg_backup_start()/pg_backup_stop() across the freeze
#PG_TIMEOUT=60
#PG_HOLD_TIMEOUT=60
CONF
    chmod 0644 /etc/default/blockrep-fsfreeze
  fi
fi

# SELinux (RHEL family): qemu-ga may run only hooks labelled as such.
if [ $family = rhel ] && command -v selinuxenabled >/dev/null 2>&1 && selinuxenabled; then
  do_ chcon -t virt_qemu_ga_unconfined_exec_t "$runner" "$runner.run" "$hookd"/mariadb "$hookd"/postgresql ||
    say "warning: could not label the hooks for SELinux; check: ls -Z $runner $hookd"
fi

# Turn on -F.
if [ $family = rhel ]; then
  # RHEL's unit passes -F${FSFREEZE_HOOK_PATHNAME} from this file (and blocks guest-file-* and
  # guest-exec by default, which blockrep does not need).
  if grep -q '^FSFREEZE_HOOK_PATHNAME=' /etc/sysconfig/qemu-ga; then
    do_ sed -i "s|^FSFREEZE_HOOK_PATHNAME=.*|FSFREEZE_HOOK_PATHNAME=$runner|" /etc/sysconfig/qemu-ga
  else
    if [ $dry = 1 ]; then say "would append FSFREEZE_HOOK_PATHNAME=$runner to /etc/sysconfig/qemu-ga"; else echo "FSFREEZE_HOOK_PATHNAME=$runner" >>/etc/sysconfig/qemu-ga; fi
  fi
  if command -v systemctl >/dev/null 2>&1 && ! systemctl cat qemu-guest-agent.service 2>/dev/null | grep -q 'FSFREEZE_HOOK'; then
    say "warning: qemu-guest-agent.service does not use FSFREEZE_HOOK_PATHNAME; add -F$runner to its ExecStart (systemctl edit qemu-guest-agent)"
  fi
elif [ -d /run/systemd/system ]; then
  # Debian's unit runs plain /usr/sbin/qemu-ga (udev starts it when the port appears).
  bin="$(command -v qemu-ga || echo /usr/sbin/qemu-ga)"
  dropin=/etc/systemd/system/qemu-guest-agent.service.d/blockrep-fsfreeze.conf
  if [ $dry = 1 ]; then say "would write $dropin"; else
    mkdir -p "${dropin%/*}"
    printf '# blockrep: run the fsfreeze hooks (guest/install-hooks.sh)\n[Service]\nExecStart=\nExecStart=-%s -F%s\n' "$bin" "$runner" >"$dropin"
    systemctl daemon-reload
  fi
else
  # sysvinit: /etc/init.d/qemu-guest-agent adds DAEMON_ARGS from this file.
  f=/etc/default/qemu-guest-agent
  if [ -f "$f" ] && grep -q '^DAEMON_ARGS=' "$f"; then
    grep -q -- "-F$runner" "$f" || do_ sed -i "s|^DAEMON_ARGS=\"\\(.*\\)\"|DAEMON_ARGS=\"\\1 -F$runner\"|" "$f"
  elif [ $dry = 1 ]; then say "would append DAEMON_ARGS=\"-F$runner\" to $f"; else
    echo "DAEMON_ARGS=\"-F$runner\"" >>"$f"
  fi
fi

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  do_ systemctl restart qemu-guest-agent.service || say "warning: could not restart qemu-guest-agent; restart it yourself"
elif [ -x /etc/init.d/qemu-guest-agent ]; then
  do_ /etc/init.d/qemu-guest-agent restart || say "warning: could not restart qemu-guest-agent; restart it yourself"
fi
say "done. Check from the host: blockrep backup --qmp SOCKET ... --json shows \"quiesced\": true; in the guest: journalctl -t blockrep-fsfreeze"
