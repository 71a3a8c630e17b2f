#!/usr/bin/env bash
# Installs the Autobahn WebSocket testsuite (wstest) into a private folder, for tests/suite/autobahn.rs.
# The suite runs on Python 2.7 only. Python 2.7 comes from Debian bullseye (the last release with
# it), fetched with a private apt state from the machine's own Debian mirror and unpacked with
# dpkg -x: nothing is installed system-wide and the system's apt configuration is untouched.
#   scripts/install-autobahn.sh          installs into $SWITCHYARD_TOOLS/autobahn
#                                        (default ~/.cache/switchyard-tools/autobahn)
# Afterwards $dir/wstest runs the suite. Downloads are kept in $dir/cache, so a second run (or a
# reinstall after a failed one) downloads nothing again.
set -euo pipefail
tools="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard-tools}"
dir="$tools/autobahn"
if [ -x "$dir/wstest" ] && "$dir/python2.7" -c 'import autobahntestsuite, wsaccel' 2>/dev/null; then
  exit 0
fi
echo "installing the Autobahn testsuite into $dir"
mkdir -p "$dir/cache/apt/lists/partial" "$dir/cache/apt/archives/partial" "$dir/cache/debs" "$dir/cache/wheels"
root="$dir/py27"
userbase="$dir/user"

# 1. Python 2.7 from Debian bullseye, through a private apt state.
mirror=$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | grep -v security | head -1)
mirror="${mirror:-http://deb.debian.org/debian/}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror bullseye main" > "$dir/cache/apt/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$dir/cache/apt/sources.list"
  -o "Dir::Etc::SourceParts=/dev/null"
  -o "Dir::State::Lists=$dir/cache/apt/lists"
  -o "Dir::Cache=$dir/cache/apt"
  -o "Dir::State::status=/dev/null"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=$(id -un)"
)
debs=(python2.7-minimal libpython2.7-minimal python2.7 libpython2.7-stdlib libpython2.7
  libpython2.7-dev python2.7-dev libssl1.1 libffi7)
missing=()
for p in "${debs[@]}"; do
  compgen -G "$dir/cache/debs/${p}_*.deb" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get -qq "${apt_opts[@]}" update
  (cd "$dir/cache/debs" && apt-get -qq "${apt_opts[@]}" download "${missing[@]}")
fi
rm -rf "$root"
mkdir -p "$root"
for f in "$dir"/cache/debs/*.deb; do
  dpkg -x "$f" "$root"
done

cat > "$dir/python2.7" <<EOF
#!/usr/bin/env bash
unset PYTHONPATH
export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PYTHONHOME="$root/usr"
export PYTHONUSERBASE="$userbase"
exec "$root/usr/bin/python2.7" "\$@"
EOF
chmod +x "$dir/python2.7"

# 2. pip for Python 2 (the last releases that support it), then the suite (with wsaccel, its C
# masking and UTF-8 validation, which the suite uses when present).
wheels="$dir/cache/wheels"
if ! compgen -G "$wheels/pip-20.3.4-*.whl" >/dev/null; then
  python3 -m pip download -q --disable-pip-version-check --no-deps -d "$wheels" \
    pip==20.3.4 setuptools==44.1.1 wheel==0.37.1
fi
rm -rf "$userbase"
"$dir/python2.7" "$(ls "$wheels"/pip-20.3.4-*.whl)/pip" install -q --no-warn-script-location --no-python-version-warning --user --no-index "$wheels"/*.whl
CFLAGS="-I$root/usr/include -I$root/usr/include/python2.7" \
  "$dir/python2.7" -m pip install -q --no-warn-script-location --no-python-version-warning --disable-pip-version-check --user \
  --cache-dir "$dir/cache/pip" autobahntestsuite==25.10.1 wsaccel==0.6.2

cat > "$dir/wstest" <<EOF
#!/usr/bin/env bash
exec "$dir/python2.7" "$userbase/bin/wstest" "\$@"
EOF
chmod +x "$dir/wstest"
"$dir/wstest" --help >/dev/null
echo "Autobahn testsuite installed: $dir/wstest"
