"""The server's endpoints, one APIRouter per concern."""
