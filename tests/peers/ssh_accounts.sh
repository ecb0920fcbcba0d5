#!/bin/sh
# The test accounts of the SSH tests (tests/e2e/ssh.rs), made on this machine; run as root
# (.ci/run does). Idempotent. The tests start their own sshd on a loopback port with a
# throwaway host key and their own authorized_keys file; these are only the accounts.
#   wl-sudo    key login, passwordless sudo
#   wl-nosudo  key login, no sudo
#   wl-pass    password login (wl-pass-Secret-42), sudo with its password
#   wl-slow    key login, but every command it runs waits 30 s first (a hung server)
set -eu
export DEBIAN_FRONTEND=noninteractive
if [ ! -x /usr/sbin/sshd ] || ! command -v sudo >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq openssh-server openssh-client sudo >/dev/null
fi
mkdir -p /run/sshd
chmod 755 /run/sshd
cat > /usr/local/bin/wl-slow-shell <<'SHELL'
#!/bin/sh
sleep 30
exec /bin/sh "$@"
SHELL
chmod 755 /usr/local/bin/wl-slow-shell
for account in wl-sudo wl-nosudo wl-pass wl-slow; do
  id -u "$account" >/dev/null 2>&1 || useradd --create-home --shell /bin/sh "$account"
done
usermod --shell /usr/local/bin/wl-slow-shell wl-slow
echo 'wl-pass:wl-pass-Secret-42' | chpasswd
cat > /etc/sudoers.d/wavelift-tests <<'SUDO'
wl-sudo ALL=(ALL) NOPASSWD: ALL
wl-pass ALL=(ALL) ALL
SUDO
chmod 440 /etc/sudoers.d/wavelift-tests
