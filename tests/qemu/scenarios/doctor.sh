# QEMU scenario: `reflex doctor` against the guest's real drivers: vivid (camera), vcan, and an
# emulated Kvaser PCIcan (SJA1000, kvaser_pci driver: a CAN controller with real bit timing,
# QEMU's `-device kvaser_pci`). First run: can0 at the wrong bitrate, vcan1 down, a camera that
# does not exist, each must be a FAIL with its fix; second run: all three fixed.
now() { read -r up _ < /proc/uptime; echo "$up"; }

ip link set can0 type can bitrate 500000 restart-ms 100 && ip link set can0 up \
    || echo "@@ERROR can0 setup failed"
ip link add dev vcan1 type vcan
reflex doctor --profile /payload/board.toml --bundle /payload/bundle \
    --camera wrist=/dev/video9 > /tmp/doctor1.out 2>&1
echo "@@DOCTOR1 rc=$? uptime=$(now)"
echo "@@BEGIN doctor1"; cat /tmp/doctor1.out; echo "@@END doctor1"

ip link set can0 down
ip link set can0 type can bitrate 1000000 restart-ms 100 && ip link set can0 up
ip link set vcan1 up
reflex doctor --profile /payload/board.toml --bundle /payload/bundle > /tmp/doctor2.out 2>&1
echo "@@DOCTOR2 rc=$? uptime=$(now)"
echo "@@BEGIN doctor2"; cat /tmp/doctor2.out; echo "@@END doctor2"
