# Sourced (after scripts/venv.sh) for the browser tests: Debian's Chromium at /usr/bin/chromium and the pinned
# Playwright from requirements-browser.txt in the active virtualenv. Quick when both are already there.
# Never runs `playwright install`: that downloads browser builds, and the tests use Debian's Chromium instead.
_browser_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ ! -x /usr/bin/chromium ]; then
    echo "[setup] installing Debian's chromium" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
fi

_browser_venv=$(python -c 'import sys; print(sys.prefix if sys.prefix != sys.base_prefix else "")' 2>/dev/null || true)
if [ -z "$_browser_venv" ]; then
    echo "[setup] scripts/browser.sh: activate the virtualenv first (source scripts/venv.sh requirements-dev.txt)" >&2
    unset _browser_root _browser_venv
    return 1
fi
_browser_stamp=$(cksum < "$_browser_root/requirements-browser.txt" | cut -d' ' -f1)
if [ "$(cat "$_browser_venv/.browser-installed" 2>/dev/null)" != "$_browser_stamp" ]; then
    echo "[setup] installing requirements-browser.txt into $_browser_venv" >&2
    python -m pip install -q --disable-pip-version-check -r "$_browser_root/requirements-browser.txt" >&2
    echo "$_browser_stamp" > "$_browser_venv/.browser-installed"
fi
unset _browser_root _browser_venv _browser_stamp
