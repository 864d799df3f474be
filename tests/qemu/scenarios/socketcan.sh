# QEMU scenario: `reflex run --can vcan0` on a replayed episode, with candump listening.
# Mid-run the interface goes down for a second, then a bus-off and a restart error frame are
# injected; the host-side test (tests/tests/qemu.rs) checks what candump saw and the counters.
# Then the guest-side test `guest_socketcan_state` (the `qemu` test binary itself, with
# REFLEX_QEMU_GUEST=1) closes the loop on the bus: sink -> vcan0 -> state source.
now() { read -r up _ < /proc/uptime; echo "$up"; }
lines() { wc -l < "$1"; }

candump -L -D vcan0 > /tmp/candump.log 2> /tmp/candump.err &
candump_pid=$!
reflex run --bundle /payload/bundle --camera replay:/payload/episode --can vcan0 \
    --duration "${REFLEX_SCENARIO_SECONDS:-6}" > /tmp/reflex.out 2>&1 &
reflex_pid=$!

# Wait for commands to flow (start-up under emulation takes a few seconds), then ~1 s more.
for _ in $(seq 300); do [ "$(lines /tmp/candump.log)" -ge 60 ] && break; sleep 0.1; done
echo "@@FLOWING uptime=$(now) lines=$(lines /tmp/candump.log)"
sleep 1
echo "@@LINK_DOWN uptime=$(now) lines=$(lines /tmp/candump.log)"
ip link set vcan0 down
sleep 1
ip link set vcan0 up
echo "@@LINK_UP uptime=$(now) lines=$(lines /tmp/candump.log)"
sleep 1
# CAN_ERR_FLAG | CAN_ERR_BUSOFF, then CAN_ERR_FLAG | CAN_ERR_RESTARTED: as a controller reports them.
cansend vcan0 20000040#0000000000000000
echo "@@BUS_OFF uptime=$(now) lines=$(lines /tmp/candump.log)"
sleep 0.5
cansend vcan0 20000100#0000000000000000
echo "@@RESTARTED uptime=$(now) lines=$(lines /tmp/candump.log)"

wait "$reflex_pid"
echo "@@REFLEX_EXIT rc=$? uptime=$(now)"
sleep 0.2
kill "$candump_pid"
echo "@@BEGIN reflex.out"; cat /tmp/reflex.out; echo "@@END reflex.out"
echo "@@BEGIN candump.err"; cat /tmp/candump.err; echo "@@END candump.err"
echo "@@BEGIN candump.log"; cat /tmp/candump.log; echo "@@END candump.log"

tests_bin="$(ls /usr/bin/qemu-* | head -1)"
REFLEX_QEMU_GUEST=1 RUST_BACKTRACE=1 "$tests_bin" --exact guest_socketcan_state --nocapture \
    --test-threads 1 2>&1
echo "@@GUEST_TESTS rc=$? uptime=$(now)"
