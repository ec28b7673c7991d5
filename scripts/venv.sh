# Sourced by scripts/run and scripts/test: make .venv hold exactly the pinned requirements given as $1.
# Reinstalls only when the requirements files change.
_venv_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_venv_requirements=${1:-requirements.txt}
_venv_dir=$_venv_root/.venv

_venv_python() {
    for candidate in python3.11 python3.12 python3.13 python3; do
        command -v "$candidate" >/dev/null 2>&1 && { echo "$candidate"; return 0; }
    done
    return 1
}

if [ ! -x "$_venv_dir/bin/python" ]; then
    _py=$(_venv_python) || { apt-get update -qq && apt-get install -y -qq python3 python3-venv >&2; _py=python3; }
    if ! "$_py" -m venv "$_venv_dir" 2>/dev/null; then
        echo "[setup] installing python3-venv" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        rm -rf "$_venv_dir"
        "$_py" -m venv "$_venv_dir"
    fi
fi

_venv_stamp=$(cd "$_venv_root" && cat requirements*.txt | cksum | cut -d' ' -f1)-$_venv_requirements
if [ "$(cat "$_venv_dir/.installed" 2>/dev/null)" != "$_venv_stamp" ]; then
    echo "[setup] installing $_venv_requirements into .venv" >&2
    "$_venv_dir/bin/python" -m pip install -q --disable-pip-version-check -r "$_venv_root/$_venv_requirements" >&2
    echo "$_venv_stamp" > "$_venv_dir/.installed"
fi
export PATH="$_venv_dir/bin:$PATH"
