"""moto with Auto Scaling lifecycle hooks for termination, as AWS documents them.

usage: moto_lifecycle.py HOST PORT EVENTS_FILE

Runs moto in-process (moto.server.ThreadedMotoServer) and adds what moto 5.2 lacks, so that
causeway-control's drain-before-scale-in can be tested against a real API server:

- Scale-in (a lower desired capacity, or TerminateInstanceInAutoScalingGroup) of a group with an
  `autoscaling:EC2_INSTANCE_TERMINATING` hook puts the instance in `Terminating:Wait` instead of
  terminating it at once (moto terminates at once). The instance stays in the group, reported
  with that lifecycle state, and no longer counts toward the desired capacity.
- `CompleteLifecycleAction` (moto answers 500) ends the wait: with CONTINUE or ABANDON the
  instance goes on to `Terminated` (both results terminate, on a terminating hook), and leaves
  the group. It is refused for an instance that is not waiting.
- `RecordLifecycleActionHeartbeat` (moto answers 500) restarts the hook's heartbeat timeout.
- A wait that sees neither a heartbeat nor a completion for `HeartbeatTimeout` seconds ends
  with the hook's `DefaultResult`, as on AWS.

Each of these is appended to EVENTS_FILE as one JSON line
(`{"t": unix time, "event": "wait" | "heartbeat" | "complete" | "timeout", "instance": id,
"hook": name, "result": ...}`), so tests can check the order of what happened.
"""
import json
import logging
import signal
import sys
import threading
import time

from moto.autoscaling import models, responses
from moto.autoscaling.exceptions import ValidationError
from moto.core.responses import EmptyResult
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.WARNING)

TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
host, port, events_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lock = threading.RLock()
# (group name, instance id) -> {"hook": LifecycleHook, "deadline": unix time}
waiting = {}


def record(event, instance, hook, **extra):
    line = dict(t=time.time(), event=event, instance=instance, hook=hook, **extra)
    with open(events_file, "a") as f:
        f.write(json.dumps(line) + "\n")


def terminating_hook(group):
    backend = group.autoscaling_backend
    for hook in backend.describe_lifecycle_hooks(group.name):
        if hook.lifecycle_transition == TERMINATING:
            return hook
    return None


def enter_wait(group, state, hook):
    state.lifecycle_state = "Terminating:Wait"
    waiting[(group.name, state.instance.id)] = {
        "group": group,
        "hook": hook,
        "deadline": time.time() + hook.heartbeat_timeout,
    }
    record("wait", state.instance.id, hook.name)


def finish(group_name, instance_id, result, event):
    """Ends a wait: the instance is terminated and leaves its group."""
    entry = waiting.pop((group_name, instance_id))
    group = entry["group"]
    group.instance_states = [
        s for s in group.instance_states if s.instance.id != instance_id
    ]
    group.autoscaling_backend.ec2_backend.terminate_instances([instance_id])
    record(event, instance_id, entry["hook"].name, result=result)


original_set_desired = models.FakeAutoScalingGroup.set_desired_capacity


def set_desired_capacity(self, new_capacity):
    with lock:
        hook = terminating_hook(self)
        target = self.min_size if new_capacity is None else new_capacity
        active = self.active_instances()
        if hook is not None and target is not None and len(active) > target:
            # The same choice moto makes (the first unprotected ones), into the wait.
            for state in [s for s in active if not s.protected_from_scale_in][
                : len(active) - target
            ]:
                enter_wait(self, state, hook)
        original_set_desired(self, new_capacity)


original_terminate = models.AutoScalingBackend.terminate_instance


def terminate_instance(self, instance_id, should_decrement):
    with lock:
        for group in self.autoscaling_groups.values():
            for state in group.instance_states:
                if state.instance.id != instance_id:
                    continue
                hook = terminating_hook(group)
                if hook is None:
                    break
                if state.lifecycle_state != "Terminating:Wait":
                    enter_wait(group, state, hook)
                original_size = group.desired_capacity
                if should_decrement:
                    group.desired_capacity = max(0, (group.desired_capacity or 0) - 1)
                else:
                    # A replacement is launched while this one waits, as on AWS.
                    original_set_desired(group, group.desired_capacity)
                return models.TerminateInstanceActivity(state.instance, original_size)
        return original_terminate(self, instance_id, should_decrement)


def waiting_entry(resp):
    group = resp._get_param("AutoScalingGroupName")
    hook = resp._get_param("LifecycleHookName")
    instance = resp._get_param("InstanceId")
    entry = waiting.get((group, instance))
    if entry is None or entry["hook"].name != hook:
        raise ValidationError(
            f"No active Lifecycle Action found with instance ID {instance}"
        )
    return group, hook, instance, entry


def complete_lifecycle_action(self):
    with lock:
        group, hook, instance, _ = waiting_entry(self)
        result = self._get_param("LifecycleActionResult")
        if result not in ("CONTINUE", "ABANDON"):
            raise ValidationError("LifecycleActionResult must be CONTINUE or ABANDON")
        finish(group, instance, result, "complete")
    return EmptyResult()


def record_lifecycle_action_heartbeat(self):
    with lock:
        _, hook, instance, entry = waiting_entry(self)
        entry["deadline"] = time.time() + entry["hook"].heartbeat_timeout
        record("heartbeat", instance, hook)
    return EmptyResult()


def expire():
    while True:
        time.sleep(0.2)
        with lock:
            now = time.time()
            for (group, instance), entry in list(waiting.items()):
                if now >= entry["deadline"]:
                    finish(group, instance, entry["hook"].default_result, "timeout")


models.FakeAutoScalingGroup.set_desired_capacity = set_desired_capacity
models.AutoScalingBackend.terminate_instance = terminate_instance
responses.AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action
responses.AutoScalingResponse.record_lifecycle_action_heartbeat = (
    record_lifecycle_action_heartbeat
)

open(events_file, "w").close()
server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
server.start()
threading.Thread(target=expire, daemon=True).start()
print(f"moto with lifecycle hooks on {host}:{port}", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
stop.wait()
server.stop()
