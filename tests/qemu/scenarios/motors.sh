# QEMU scenario: `reflex run` driving simulated Damiao MIT motors on vcan0 (the qemu test binary's
# `guest_mit_motor_sim`), joint state from their replies, e-stop and arm frames on the bus. The
# host-side test (mit_motors_and_can_estop_on_vcan in tests/tests/qemu.rs) checks the frame order
# candump saw, the e-stop window and the counters.
now() { read -r up _ < /proc/uptime; echo "$up"; }
lines() { wc -l < "$1"; }
tests_bin="$(ls /usr/bin/qemu-* | head -1)"

candump -L -D vcan0 > /tmp/candump.log 2> /tmp/candump.err &
candump_pid=$!
REFLEX_QEMU_GUEST=1 RUST_BACKTRACE=1 "$tests_bin" --exact guest_mit_motor_sim --nocapture \
    --test-threads 1 > /tmp/sim.out 2>&1 &
sim_pid=$!
sleep 0.5
reflex run --bundle /payload/bundle --camera replay:/payload/episode --can vcan0 \
    --state can:vcan0 --estop can:vcan0:0E0 --arm can:vcan0:0E1 \
    --duration "${REFLEX_SCENARIO_SECONDS:-9}" > /tmp/reflex.out 2>&1 &
reflex_pid=$!

# Wait for commands to flow (start-up under emulation takes a few seconds), then ~1 s more.
for _ in $(seq 300); do [ "$(lines /tmp/candump.log)" -ge 150 ] && break; sleep 0.1; done
echo "@@FLOWING uptime=$(now) lines=$(lines /tmp/candump.log)"
sleep 1
cansend vcan0 0E0#01
echo "@@PRESSED uptime=$(now) lines=$(lines /tmp/candump.log)"
sleep 1
cansend vcan0 0E0#00
echo "@@RELEASED uptime=$(now) lines=$(lines /tmp/candump.log)"
sleep 1
cansend vcan0 0E1#01
echo "@@ARMED uptime=$(now) lines=$(lines /tmp/candump.log)"

wait "$reflex_pid"
echo "@@REFLEX_EXIT rc=$? uptime=$(now)"
# Jog by hand: ramp every joint to a target from the motors' measured positions.
reflex can send --bundle /payload/bundle --can vcan0 --state can:vcan0 --hold 1.5 \
    shoulder_pan=0.5 shoulder_lift=-0.5 elbow_flex=0.25 wrist_flex=0 wrist_roll=0.1 \
    gripper=0.04 > /tmp/cansend.out 2>&1
echo "@@CANSEND rc=$? uptime=$(now)"
touch /tmp/sim.stop
wait "$sim_pid"
echo "@@SIM_EXIT rc=$? uptime=$(now)"
sleep 0.2
kill "$candump_pid"
grep '^@@SIM ' /tmp/sim.out
echo "@@BEGIN sim.out"; cat /tmp/sim.out; echo "@@END sim.out"
echo "@@BEGIN reflex.out"; cat /tmp/reflex.out; echo "@@END reflex.out"
echo "@@BEGIN cansend.out"; cat /tmp/cansend.out; echo "@@END cansend.out"
echo "@@BEGIN candump.log"; cat /tmp/candump.log; echo "@@END candump.log"
