# QEMU scenario: CAN FD on vcan. vcan0 is switched to CAN FD (MTU 72); a background loop plays a
# robot broadcasting its joint state in a 16-byte CAN FD frame; `reflex can send --state can:vcan0`
# on a DBC bundle whose command message is 16 bytes reads that state, ramps to its targets and
# sends CAN FD frames, which candump records. A second vcan set to classic CAN (MTU 16; vcan
# defaults to CAN FD) is refused with an error naming the MTU. The host-side test (can_fd_on_vcan
# in tests/tests/qemu.rs) checks the frames.
now() { read -r up _ < /proc/uptime; echo "$up"; }
ip link set vcan0 down && ip link set vcan0 mtu 72 && ip link set vcan0 up
ip link add dev vcan1 type vcan && ip link set vcan1 mtu 16 && ip link set vcan1 up
echo "@@MTU vcan0=$(cat /sys/class/net/vcan0/mtu) vcan1=$(cat /sys/class/net/vcan1/mtu)"

candump -L vcan0 > /tmp/candump.log 2> /tmp/candump.err &
candump_pid=$!
# Joint state: 0.1, -0.2, 0.3, 0, 0, 0.02 as signed 16-bit at 0.0001 (little-endian), 4 spare.
( while true; do
    cansend vcan0 300##0E80330F8B80B00000000C80000000000
    sleep 0.02
done ) &
robot_pid=$!
sleep 0.3
reflex can send --bundle /payload/bundle --can vcan0 --state can:vcan0 --hold 1 \
    shoulder_pan=0.5 shoulder_lift=-0.5 elbow_flex=0.25 wrist_flex=0 wrist_roll=0.1 \
    gripper=0.04 > /tmp/send.out 2>&1
echo "@@SEND rc=$? uptime=$(now)"
reflex can send --bundle /payload/bundle --can vcan1 \
    shoulder_pan=0.5 shoulder_lift=-0.5 elbow_flex=0.25 wrist_flex=0 wrist_roll=0.1 \
    gripper=0.04 > /tmp/classic.out 2>&1
echo "@@CLASSIC rc=$? uptime=$(now)"
kill "$robot_pid"
sleep 0.2
kill "$candump_pid"
echo "@@BEGIN send.out"; cat /tmp/send.out; echo "@@END send.out"
echo "@@BEGIN classic.out"; cat /tmp/classic.out; echo "@@END classic.out"
echo "@@BEGIN candump.log"; cat /tmp/candump.log; echo "@@END candump.log"
