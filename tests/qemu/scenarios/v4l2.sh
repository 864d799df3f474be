# QEMU scenario: the V4L2 camera on vivid. First the guest-side test (the `qemu` test binary
# itself, run with REFLEX_QEMU_GUEST=1: capture in YUYV and GREY, format errors, unplug and
# reopen), then `reflex run --camera /dev/v4l/by-id/... --can vcan0` end to end (the stable name made
# by hand: the guest has no udev).
now() { read -r up _ < /proc/uptime; echo "$up"; }

tests_bin="$(ls /usr/bin/qemu-* | head -1)"
REFLEX_QEMU_GUEST=1 RUST_BACKTRACE=1 "$tests_bin" --exact guest_v4l2_capture --nocapture \
    --test-threads 1 2>&1
echo "@@GUEST_TESTS rc=$? uptime=$(now)"

# The guest has no udev: make the stable name it would create, and open the camera by it.
mkdir -p /dev/v4l/by-id
ln -sf ../../video0 /dev/v4l/by-id/platform-vivid.0-video-index0
candump -L vcan0 > /tmp/candump.log 2> /tmp/candump.err &
candump_pid=$!
reflex run --bundle /payload/bundle --camera /dev/v4l/by-id/platform-vivid.0-video-index0 \
    --state replay:/payload/episode \
    --can vcan0 --duration "${REFLEX_SCENARIO_SECONDS:-4}" > /tmp/reflex.out 2>&1
echo "@@REFLEX_EXIT rc=$? uptime=$(now)"
sleep 0.2
kill "$candump_pid"
echo "@@BEGIN reflex.out"; cat /tmp/reflex.out; echo "@@END reflex.out"
echo "@@CANDUMP lines=$(wc -l < /tmp/candump.log)"
echo "@@BEGIN candump.tail"; tail -12 /tmp/candump.log; echo "@@END candump.tail"
