# Sourced by scripts/test and scripts/bench: installs what the build needs
# on a fresh machine that has only Swift (liburing's headers and library).
dmem_install_deps() {
    if ! { [ -f /usr/include/liburing.h ] && ldconfig -p 2>/dev/null | grep -q 'liburing\.so'; }; then
        echo "dmem-emu: installing liburing-dev (apt-get)..." >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq liburing-dev >&2 || {
            echo "dmem-emu: could not install liburing-dev; install it by hand (Debian/Ubuntu: apt-get install liburing-dev)" >&2
            return 1
        }
    fi
}
