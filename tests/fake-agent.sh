#!/usr/bin/env bash
# A fake coding agent for Kiln's tests. It prints a banner with its arguments,
# then reads lines and answers each:
#   exit N   prints "bye" and exits with code N
#   sleep N  sleeps N seconds, then prints "slept"
#   spam N   prints N numbered lines
#   write F  writes "agent was here" to file F (relative to the worktree)
#   anything else is echoed back as "echo: <line>"
echo "fake-agent ready: $*"
while IFS= read -r line; do
  case "$line" in
    "exit "*) echo "bye"; exit "${line#exit }" ;;
    "sleep "*) sleep "${line#sleep }"; echo "slept" ;;
    "spam "*) for i in $(seq 1 "${line#spam }"); do echo "line $i"; done ;;
    "write "*) echo "agent was here" > "${line#write }"; echo "wrote ${line#write }" ;;
    *) echo "echo: $line" ;;
  esac
done
echo "stdin closed"
