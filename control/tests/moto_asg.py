"""Sets up and changes a moto Auto Scaling group for control's tests (boto3 from the venv).

usage: moto_asg.py ENDPOINT ACTION [ARGS]
- `setup` makes a VPC 127.10.0.0/16 with subnets in us-east-1a and us-east-1b, a launch template,
  and the group `wordpress` tagged `causeway:pool=wordpress` (2 instances in the first subnet,
  plus one launched in the second and attached, since moto puts a group's instances in its first
  subnet).
- `scale N`: the desired capacity of `wordpress`.
- `hook NAME TIMEOUT`: a Terminating lifecycle hook on `wordpress` (default result ABANDON).
- `terminate ID`: TerminateInstanceInAutoScalingGroup, decrementing the desired capacity.
- `group NAME N POOL`: another group of N instances in the second subnet, tagged
  `causeway:pool=POOL` (`-`: untagged).
Prints the instances of `wordpress` (of NAME for `group`) as JSON: [[id, private ip, zone,
lifecycle state], ...].
"""
import json
import sys

import boto3

endpoint, action = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=endpoint, region_name="us-east-1",
          aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
asg = boto3.client("autoscaling", **kw)

if action == "setup":
    vpc = ec2.create_vpc(CidrBlock="127.10.0.0/16")["Vpc"]["VpcId"]
    a = ec2.create_subnet(VpcId=vpc, CidrBlock="127.10.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    b = ec2.create_subnet(VpcId=vpc, CidrBlock="127.10.2.0/24", AvailabilityZone="us-east-1b")["Subnet"]["SubnetId"]
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName="wordpress-lt",
                               LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.micro"})
    asg.create_auto_scaling_group(AutoScalingGroupName="wordpress",
                                  LaunchTemplate={"LaunchTemplateName": "wordpress-lt", "Version": "$Latest"},
                                  MinSize=0, MaxSize=10, DesiredCapacity=2, VPCZoneIdentifier=a,
                                  Tags=[{"Key": "causeway:pool", "Value": "wordpress",
                                         "PropagateAtLaunch": False}])
    other = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, SubnetId=b)["Instances"][0]["InstanceId"]
    asg.attach_instances(InstanceIds=[other], AutoScalingGroupName="wordpress")
elif action == "scale":
    asg.update_auto_scaling_group(AutoScalingGroupName="wordpress", MinSize=0,
                                  DesiredCapacity=int(sys.argv[3]))
elif action == "hook":
    asg.put_lifecycle_hook(LifecycleHookName=sys.argv[3], AutoScalingGroupName="wordpress",
                           LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                           HeartbeatTimeout=int(sys.argv[4]), DefaultResult="ABANDON")
elif action == "terminate":
    asg.terminate_instance_in_auto_scaling_group(InstanceId=sys.argv[3],
                                                 ShouldDecrementDesiredCapacity=True)
elif action == "group":
    b = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]
         if s["CidrBlock"] == "127.10.2.0/24"][0]
    tags = [] if sys.argv[5] == "-" else [{"Key": "causeway:pool", "Value": sys.argv[5],
                                          "PropagateAtLaunch": False}]
    asg.create_auto_scaling_group(AutoScalingGroupName=sys.argv[3],
                                  LaunchTemplate={"LaunchTemplateName": "wordpress-lt", "Version": "$Latest"},
                                  MinSize=0, MaxSize=10, DesiredCapacity=int(sys.argv[4]),
                                  VPCZoneIdentifier=b, Tags=tags)
else:
    raise SystemExit(f"unknown action {action}")

name = sys.argv[3] if action == "group" else "wordpress"
states = {i["InstanceId"]: i["LifecycleState"]
          for g in asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
          for i in g["Instances"]}
out = []
if states:
    for r in ec2.describe_instances(InstanceIds=list(states))["Reservations"]:
        for i in r["Instances"]:
            out.append([i["InstanceId"], i.get("PrivateIpAddress"), i["Placement"]["AvailabilityZone"],
                        states[i["InstanceId"]]])
print(json.dumps(sorted(out, key=lambda x: x[1] or "")))
