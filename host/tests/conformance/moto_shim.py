"""The one test-only shim: moto 5 refuses `MessageStructure="string"`.

insanic-iniesta 0.4.0 publishes every SNS message with `MessageStructure="string"` (real SNS
accepts it; moto 5.2.5 answers InvalidParameterValue: only "json" is allowed, moto/sns/models.py).
This registers a botocore `provide-client-params` hook on the library's own session that drops
that one parameter when its value is "string". Nothing else is changed.
"""


def _drop_string_structure(params, **_kwargs):
    if params.get("MessageStructure") == "string":
        del params["MessageStructure"]


def install():
    from iniesta.sessions import BotoSession

    BotoSession.get_session().register(
        "provide-client-params.sns.Publish", _drop_string_structure
    )
