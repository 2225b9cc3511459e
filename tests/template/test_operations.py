"""Operations and failure handling, checked on the transformed template: alarms, log groups, encryption,
dead-letter queues, the dashboard, the consumers' event sources and the outputs."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from tests.template.checks import consumer_contract_problems, log_group_problems
from tests.template.conftest import (
    API_URL,
    CONSUMER_IDS,
    FUNCTION_IDS,
    KEY_ARN,
    REFRESHER_ALIAS_NAME,
    REFRESHER_ID,
    Evaluator,
    alias_id,
    possible_statements,
    references,
    resources_of_type,
)

ALARM_TOPIC = {"Ref": "AlarmTopic"}


def alarms(resources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: r["Properties"] for k, r in resources_of_type(resources, "AWS::CloudWatch::Alarm").items()}


def alarms_on(resources: dict[str, dict[str, Any]], namespace: str, metric: str, target: str) -> list[dict[str, Any]]:
    return [
        alarm
        for alarm in alarms(resources).values()
        if alarm.get("Namespace") == namespace
        and alarm.get("MetricName") == metric
        and any(references(d["Value"], target) for d in alarm.get("Dimensions", []))
    ]


def dead_letter_queues(resources: dict[str, dict[str, Any]]) -> set[str]:
    """Every queue that collects failures: redrive targets, scheduler/rule DLQs, on-failure destinations."""
    found: set[str] = set()
    for resource in resources.values():
        properties = resource["Properties"]
        if resource["Type"] == "AWS::SQS::Queue" and "RedrivePolicy" in properties:
            found.add(properties["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0])
        if resource["Type"] == "AWS::Scheduler::Schedule" and "DeadLetterConfig" in properties["Target"]:
            found.add(properties["Target"]["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0])
        if resource["Type"] == "AWS::Events::Rule":
            found.update(
                t["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0] for t in properties["Targets"] if "DeadLetterConfig" in t
            )
        if resource["Type"] == "AWS::Lambda::EventInvokeConfig":
            on_failure = properties.get("DestinationConfig", {}).get("OnFailure")
            if on_failure:
                found.add(on_failure["Destination"]["Fn::GetAtt"][0])
    return found


# --- Alarms ---------------------------------------------------------------------------------------------


def test_every_alarm_notifies_the_alarm_topic(cfn_resources):
    found = alarms(cfn_resources)
    assert len(found) >= 11
    for logical_id, alarm in found.items():
        assert ALARM_TOPIC in alarm.get("AlarmActions", []), logical_id
        assert ALARM_TOPIC in alarm.get("OKActions", []), logical_id
        assert alarm.get("AlarmDescription"), logical_id
        assert alarm.get("TreatMissingData"), logical_id
        # Named after the stack: the key and topic policies admit only alarms named ${AWS::StackName}-*.
        assert alarm["AlarmName"]["Fn::Sub"].startswith("${AWS::StackName}-"), logical_id


@pytest.mark.parametrize("function_id", FUNCTION_IDS)
@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_every_function_has_errors_and_throttles_alarms(cfn_resources, function_id, metric):
    assert len(alarms_on(cfn_resources, "AWS/Lambda", metric, function_id)) == 1


def test_refresher_throttles_alarm_tolerates_single_flight_throttling(cfn_resources):
    # Reserved concurrency 1 throttles concurrent on-demand requests by design: only sustained, heavy
    # throttling (consumers asking again and again) is worth a page.
    (alarm,) = alarms_on(cfn_resources, "AWS/Lambda", "Throttles", REFRESHER_ID)
    assert alarm["Threshold"] >= 20
    assert alarm["EvaluationPeriods"] >= 3
    assert alarm["DatapointsToAlarm"] == alarm["EvaluationPeriods"]
    for consumer in CONSUMER_IDS:
        (consumer_alarm,) = alarms_on(cfn_resources, "AWS/Lambda", "Throttles", consumer)
        assert consumer_alarm["Threshold"] <= 1


def test_every_dead_letter_queue_has_a_depth_alarm(cfn_resources):
    queues = dead_letter_queues(cfn_resources)
    assert queues == {
        "RefreshScheduleDeadLetterQueue",
        "RefresherFailureQueue",
        "MeterEventsDeadLetterQueue",
        "MeterEventsDeliveryDeadLetterQueue",
    }
    for queue in queues:
        (alarm,) = alarms_on(cfn_resources, "AWS/SQS", "ApproximateNumberOfMessagesVisible", queue)
        assert alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert alarm["TreatMissingData"] == "notBreaching"


def test_token_freshness_alarm(sam_template, cfn_resources):
    (alarm,) = [a for a in alarms(cfn_resources).values() if a.get("MetricName") == "TokenSecondsRemaining"]
    # The namespace the refresher publishes to: this stack's own.
    namespace = cfn_resources[REFRESHER_ID]["Properties"]["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    assert alarm["Namespace"] == namespace == {"Fn::Sub": "UsageEngine/${AWS::StackName}"}
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "token-refresher"}]
    assert (alarm["Statistic"], alarm["Period"]) == ("Minimum", 300)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 600)
    assert alarm["TreatMissingData"] == "breaching"
    # No false alarm in normal operation: a skipped run reports at least the margin, never less than 600 s.
    assert sam_template["Parameters"]["RefreshMarginSeconds"]["MinValue"] >= alarm["Threshold"]
    # Missing data breaches, so the refresher must report within every 5-minute period.
    pattern = re.compile(sam_template["Parameters"]["RefreshScheduleExpression"]["AllowedPattern"])
    assert pattern.match("rate(5 minutes)")
    assert pattern.match("rate(1 minute)")
    assert not pattern.match("rate(6 minutes)")
    assert not pattern.match("rate(1 hour)")


def test_alarm_email_subscription_is_optional(cfn_resources):
    subscription = cfn_resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["TopicArn"] == ALARM_TOPIC


def test_alarm_topic_admits_only_this_stacks_alarms(cfn_resources):
    statement = cfn_resources["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"].endswith(":alarm:${AWS::StackName}-*")


def unscoped_topic_publishers(resources: dict[str, dict[str, Any]]) -> list[Any]:
    """Services the alarm topic admits without naming the one source (alarm or rule) they act for."""
    document = resources["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]
    return [
        statement["Principal"]
        for statement in possible_statements(document)
        if statement["Effect"] == "Allow"
        and not any("aws:SourceArn" in keyed for keyed in statement.get("Condition", {}).values())
    ]


def test_replication_failures_notify_the_alarm_topic_when_there_are_replicas(sam_template, cfn_resources):
    rule = cfn_resources["TokenSecretReplicationFailedRule"]
    assert rule["Condition"] == "HasReplicas"
    assert rule["Properties"]["EventPattern"] == {
        "source": ["aws.secretsmanager"],
        "detail": {"eventSource": ["secretsmanager.amazonaws.com"], "eventName": ["ReplicationFailed"]},
    }
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == ALARM_TOPIC
    # The topic admits EventBridge only for that rule, and only while the rule exists.
    document = cfn_resources["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]
    (conditional,) = [s for s in document["Statement"] if set(s) == {"Fn::If"}]
    condition, statement, otherwise = conditional["Fn::If"]
    assert (condition, otherwise) == ("HasReplicas", {"Ref": "AWS::NoValue"})
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["TokenSecretReplicationFailedRule", "Arn"]}}
    }
    assert unscoped_topic_publishers(cfn_resources) == []
    assert not Evaluator(sam_template, {}).condition("HasReplicas")
    assert Evaluator(sam_template, {"TokenSecretReplicaRegions": "us-east-1"}).condition("HasReplicas")


def test_negative_the_topic_check_sees_an_unscoped_publisher(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    statements = broken["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (conditional,) = [s for s in statements if set(s) == {"Fn::If"}]
    del conditional["Fn::If"][1]["Condition"]
    assert unscoped_topic_publishers(broken) == [{"Service": "events.amazonaws.com"}]


# --- Logs and encryption --------------------------------------------------------------------------------


def test_every_log_group_has_retention_and_the_key(cfn_resources):
    groups = resources_of_type(cfn_resources, "AWS::Logs::LogGroup")
    # The functions' (one each) and the HTTP API's access log, and no other: every group has its owner.
    assert log_group_problems(cfn_resources) == []
    assert len(groups) == len(resources_of_type(cfn_resources, "AWS::Lambda::Function")) + 1
    for logical_id, group in groups.items():
        assert group["Properties"].get("RetentionInDays") == {"Ref": "LogRetentionDays"}, logical_id
        assert group["Properties"].get("KmsKeyId") == KEY_ARN, logical_id


def test_log_group_names_match_the_key_policy(cfn_resources):
    # The key lets CloudWatch Logs use it only for /aws/lambda/${AWS::StackName}/* and
    # /aws/apigateway/${AWS::StackName}/*: a log group elsewhere could not be created.
    for logical_id, group in resources_of_type(cfn_resources, "AWS::Logs::LogGroup").items():
        name = group["Properties"]["LogGroupName"]["Fn::Sub"]
        assert re.match(r"^/aws/(lambda|apigateway)/\$\{AWS::StackName\}/[a-z-]+$", name), (logical_id, name)


@pytest.mark.parametrize("function_id", FUNCTION_IDS)
def test_functions_log_to_their_own_group(cfn_resources, function_id):
    config = cfn_resources[function_id]["Properties"]["LoggingConfig"]
    (group_id,) = [g for g in resources_of_type(cfn_resources, "AWS::Logs::LogGroup") if references(config, g)]
    assert config == {"LogGroup": {"Ref": group_id}}


def unencrypted(resources: dict[str, dict[str, Any]]) -> list[str]:
    """Queues and topics not encrypted with the bundle's key (SQS-managed SSE does not count)."""
    return [
        logical_id
        for logical_id, resource in resources_of_type(resources, "AWS::SQS::Queue", "AWS::SNS::Topic").items()
        if resource["Properties"].get("KmsMasterKeyId") != KEY_ARN
    ]


def test_every_queue_and_topic_is_encrypted_with_the_key(cfn_resources):
    assert len(resources_of_type(cfn_resources, "AWS::SQS::Queue")) == 5
    assert len(resources_of_type(cfn_resources, "AWS::SNS::Topic")) == 1
    assert unencrypted(cfn_resources) == []


def test_negative_the_encryption_check_sees_an_sse_sqs_queue(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    del broken["MeterEventsDeadLetterQueue"]["Properties"]["KmsMasterKeyId"]
    broken["MeterEventsDeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] = True
    assert unencrypted(broken) == ["MeterEventsDeadLetterQueue"]


# --- Failure handling -----------------------------------------------------------------------------------


def test_refresher_failure_handling(refresher, cfn_resources):
    (config,) = [
        c["Properties"]
        for c in resources_of_type(cfn_resources, "AWS::Lambda::EventInvokeConfig").values()
        if c["Properties"]["FunctionName"] == {"Ref": REFRESHER_ID}
    ]
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["RefresherFailureQueue", "Arn"]}
    assert config["MaximumRetryAttempts"] == 2


def test_meter_events_queue_redrive_and_visibility(cfn_resources):
    queue = cfn_resources["MeterEventsQueue"]["Properties"]
    timeout = cfn_resources["MeterEventsFunction"]["Properties"]["Timeout"]
    assert timeout == 30
    assert queue["VisibilityTimeout"] >= 6 * timeout  # AWS guidance for Lambda event sources
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["MeterEventsDeadLetterQueue", "Arn"]},
        "maxReceiveCount": 5,
    }
    # Dead letters outlive the messages they come from.
    assert (
        cfn_resources["MeterEventsDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]
        > queue["MessageRetentionPeriod"]
    )


def test_meter_events_source_reports_partial_batch_failures(cfn_resources):
    (mapping,) = resources_of_type(cfn_resources, "AWS::Lambda::EventSourceMapping").values()
    properties = mapping["Properties"]
    # The live alias, so that a gradual deployment shifts the batches too.
    assert properties["FunctionName"] == {"Ref": alias_id("MeterEventsFunction")}
    assert properties["EventSourceArn"] == {"Fn::GetAtt": ["MeterEventsQueue", "Arn"]}
    assert properties["BatchSize"] == 10
    assert properties["MaximumBatchingWindowInSeconds"] == 1
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 2 <= properties["ScalingConfig"]["MaximumConcurrency"] <= 10


def test_meter_events_rule_routes_meter_events_to_the_queue(cfn_resources):
    rule = cfn_resources["MeterEventsRule"]["Properties"]
    assert rule["EventBusName"] == {"Ref": "UsageEngineEventBus"}
    assert rule["EventPattern"] == {"detail-type": ["Create Meter", "Update Meter", "Delete Meter"]}
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["MeterEventsQueue", "Arn"]}


@pytest.mark.parametrize(
    ("function_id", "service", "timeout"),
    [("MeterEventsFunction", "meter-events", 30), ("MeterQueryFunction", "meter-query", 15)],
)
def test_consumer_configuration(cfn_resources, function_id, service, timeout):
    properties = cfn_resources[function_id]["Properties"]
    assert properties["Handler"] == "app.lambda_handler"
    assert properties["Timeout"] == timeout
    env = properties["Environment"]["Variables"]
    assert env["POWERTOOLS_SERVICE_NAME"] == service
    assert env["TOKEN_SECRET_ID"] == {"Ref": "TokenSecret"}
    assert env["TOKEN_EXPIRY_SKEW_SECONDS"] == {"Ref": "TokenExpirySkewSeconds"}
    # The refresher's live alias, so that an on-demand refresh runs the version the schedule runs.
    assert env["TOKEN_REFRESHER_FUNCTION"] == REFRESHER_ALIAS_NAME
    assert env["USAGE_ENGINE_API_URL"] == API_URL
    expected = {"POWERTOOLS_SERVICE_NAME", "TOKEN_SECRET_ID", "TOKEN_EXPIRY_SKEW_SECONDS"}
    expected |= {"TOKEN_REFRESHER_FUNCTION", "USAGE_ENGINE_API_URL", "POWERTOOLS_METRICS_NAMESPACE"}
    expected |= {"POWERTOOLS_LOGGER_LOG_EVENT", "POWERTOOLS_LOG_LEVEL", "USAGE_ENGINE_XRAY_SDK"}
    if function_id == "MeterEventsFunction":
        assert env["DEAD_LETTER_QUEUE_URL"] == {"Ref": "MeterEventsDeadLetterQueue"}
        assert env["METER_STATE_TABLE"] == {"Ref": "MeterStateTable"}
        # The function dead-letters on the delivery the redrive policy would otherwise move without a reason.
        redrive = cfn_resources["MeterEventsQueue"]["Properties"]["RedrivePolicy"]
        assert int(env["MAX_RECEIVE_COUNT"]) == int(redrive["maxReceiveCount"])
        expected |= {"DEAD_LETTER_QUEUE_URL", "METER_STATE_TABLE", "MAX_RECEIVE_COUNT"}
    assert set(env) == expected
    assert "ReservedConcurrentExecutions" not in properties


def test_every_consumer_gets_the_contract_and_the_consumer_policy(cfn_resources):
    # The check every consumer, built in or added to the template, must pass (test_added_consumer.py).
    assert consumer_contract_problems(cfn_resources) == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("USAGE_ENGINE_API_URL", {"Ref": "UsageEngineApiUrl"}),  # empty unless overridden: not region-aware
        ("TOKEN_REFRESHER_FUNCTION", {"Ref": REFRESHER_ID}),  # unqualified: bypasses the live alias
        ("TOKEN_SECRET_ID", {"Ref": "CredentialsSecret"}),
    ],
)
def test_negative_the_contract_check_sees_a_wrong_variable(cfn_resources, name, value):
    broken = copy.deepcopy(cfn_resources)
    broken["MeterQueryFunction"]["Properties"]["Environment"]["Variables"][name] = value
    assert any(name in problem for problem in consumer_contract_problems(broken))


def test_negative_the_contract_check_sees_a_consumer_without_the_consumer_policy(cfn_resources):
    broken = copy.deepcopy(cfn_resources)
    del broken["MeterQueryRole"]["Properties"]["ManagedPolicyArns"]
    assert any("ConsumerPolicy" in problem for problem in consumer_contract_problems(broken))


def test_meter_query_api_logs_access_and_throttles(cfn_resources):
    (stage,) = resources_of_type(cfn_resources, "AWS::ApiGatewayV2::Stage").values()
    settings = stage["Properties"]
    destination = settings["AccessLogSettings"]["DestinationArn"]
    assert references(destination, "MeterQueryApiAccessLogGroup")
    assert json.loads(settings["AccessLogSettings"]["Format"])["requestId"] == "$context.requestId"
    routes = settings["DefaultRouteSettings"]
    assert routes["ThrottlingRateLimit"] > 0
    assert routes["ThrottlingBurstLimit"] > 0


# --- Dashboard and outputs ------------------------------------------------------------------------------


def test_dashboard_shows_what_the_issue_asks_for(cfn_resources):
    body = cfn_resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    document = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))
    text = json.dumps(document)
    for metric in ("TokenSecondsRemaining", "TokenRefreshed", "TokenRefreshSkipped", "TokenRefreshFailed"):
        assert f'"{metric}"' in text, metric
    assert '"IdpLatency"' in text
    # API calls by status: every service's ApiCalls metric, one line per status.
    expressions = [
        metric[0]["expression"]
        for widget in document["widgets"]
        for metric in widget["properties"].get("metrics", [])
        if isinstance(metric[0], dict)
    ]
    # This stack's consumers, and consumers in other stacks that publish under the layer's default namespace.
    assert "SEARCH('{\"UsageEngine/x\",service,status} MetricName=\"ApiCalls\"', 'Sum', 300)" in expressions
    assert "SEARCH('{UsageEngine,service,status} MetricName=\"ApiCalls\"', 'Sum', 300)" in expressions
    # The refresher's metrics are this stack's too.
    namespaces = {
        metric[0]
        for widget in document["widgets"]
        for metric in widget["properties"].get("metrics", [])
        if isinstance(metric[0], str) and metric[0] not in (".", "...") and not metric[0].startswith("AWS/")
    }
    assert namespaces == {"UsageEngine/x"}
    for function_id in FUNCTION_IDS:
        assert f"${{{function_id}}}" in body, function_id
    assert len(document["widgets"]) >= 6


REQUIRED_OUTPUTS = {
    "CredentialsSecretArn",
    "TokenSecretArn",
    "EncryptionKeyArn",
    "TokenRefresherFunctionName",
    "TokenRefresherFunctionArn",
    "TokenRefresherLogGroupName",
    "UsageEngineLayerArn",
    "RefreshScheduleDeadLetterQueueUrl",
    "RefreshScheduleDeadLetterQueueArn",
    "RefresherFailureQueueUrl",
    "RefresherFailureQueueArn",
    "UsageEngineApiUrl",
    "UsageEngineTokenUrl",
    "UsageEngineAudience",
    "TokenExpirySkewSeconds",
    "UsageEngineEventBusName",
    "UsageEngineEventBusArn",
    "MeterEventsQueueUrl",
    "MeterEventsQueueArn",
    "MeterEventsDeadLetterQueueUrl",
    "MeterEventsDeadLetterQueueArn",
    "MeterEventsDeliveryDeadLetterQueueUrl",
    "MeterEventsDeliveryDeadLetterQueueArn",
    "MeterEventsFunctionName",
    "MeterEventsFunctionArn",
    "MeterEventsLogGroupName",
    "MeterQueryApiUrl",
    "MeterQueryFunctionName",
    "MeterQueryFunctionArn",
    "MeterQueryLogGroupName",
    "AlarmTopicArn",
    "DashboardName",
    "DashboardUrl",
}


def test_outputs_name_every_arn_name_and_url_a_user_needs(cfn_template):
    outputs = cfn_template["Outputs"]
    assert set(outputs) >= REQUIRED_OUTPUTS
    for name, output in outputs.items():
        assert output.get("Description"), name
