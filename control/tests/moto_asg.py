"""Sets up and changes a moto Auto Scaling group for control's tests (boto3 from the venv).

usage: moto_asg.py ENDPOINT setup | scale N
`setup` makes a VPC 127.10.0.0/16 with subnets in us-east-1a and us-east-1b, a launch template,
and the group `wordpress` (2 instances in the first subnet, plus one launched in the second and
attached, since moto puts a group's instances in its first subnet). Prints the group's instances
as JSON: [[id, private ip, zone], ...].
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
                                  MinSize=0, MaxSize=10, DesiredCapacity=2, VPCZoneIdentifier=a)
    other = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, SubnetId=b)["Instances"][0]["InstanceId"]
    asg.attach_instances(InstanceIds=[other], AutoScalingGroupName="wordpress")
elif action == "scale":
    asg.update_auto_scaling_group(AutoScalingGroupName="wordpress", MinSize=0,
                                  DesiredCapacity=int(sys.argv[3]))
else:
    raise SystemExit(f"unknown action {action}")

ids = [i["InstanceId"] for g in asg.describe_auto_scaling_groups(AutoScalingGroupNames=["wordpress"])["AutoScalingGroups"]
       for i in g["Instances"]]
out = []
if ids:
    for r in ec2.describe_instances(InstanceIds=ids)["Reservations"]:
        for i in r["Instances"]:
            out.append([i["InstanceId"], i.get("PrivateIpAddress"), i["Placement"]["AvailabilityZone"]])
print(json.dumps(sorted(out, key=lambda x: x[1] or "")))
