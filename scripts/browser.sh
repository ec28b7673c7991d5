# Sourced after scripts/venv.sh: Debian's Chromium and the pinned Playwright (requirements-browser.txt) for the
# browser tests. Quick when both are present. Never runs `playwright install` (it downloads browser builds).
_browser_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ ! -x /usr/bin/chromium ]; then
    echo "[setup] installing Debian's chromium" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
fi

_browser_python=$(command -v python)
_browser_stamp=$(cksum < "$_browser_root/requirements-browser.txt" | cut -d' ' -f1)
_browser_stamp_file=$(dirname "$_browser_python")/../.browser-installed
if [ "$(cat "$_browser_stamp_file" 2>/dev/null)" != "$_browser_stamp" ]; then
    echo "[setup] installing requirements-browser.txt into $(dirname "$(dirname "$_browser_python")")" >&2
    "$_browser_python" -m pip install -q --disable-pip-version-check -r "$_browser_root/requirements-browser.txt" >&2
    echo "$_browser_stamp" > "$_browser_stamp_file"
fi
unset _browser_root _browser_python _browser_stamp _browser_stamp_file
