"""The code of the logged MLflow pyfunc model ("models from code"): MLflow stores this file with the model and runs
it on load, so nothing is unpickled. It only names the model class (chestxray.deploy.pyfunc.BundlePyfunc)."""

from mlflow.models import set_model

from chestxray.deploy.pyfunc import BundlePyfunc

set_model(BundlePyfunc())
